"""scoring.content_queries, many sessions in one numpy pass, against Embeddings.content_query, one at a time."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.scoring import Embeddings, content_queries

ROWS, DIM = 6, 4


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    empty_rows=st.sets(st.integers(0, ROWS - 1), max_size=ROWS),
    sessions=st.lists(st.lists(st.integers(0, ROWS - 1), max_size=6), max_size=8),
)
def test_many_sessions_at_once_give_each_session_its_own_query(seed, empty_rows, sessions):
    content = np.random.default_rng(seed).normal(size=(ROWS, DIM)).astype(np.float32)
    content[sorted(empty_rows)] = 0.0  # items without metadata
    table = Embeddings(
        [f"i{k}" for k in range(ROWS)],
        np.zeros((ROWS, DIM), np.float32),
        np.zeros((ROWS, DIM), np.float32),
        np.zeros(ROWS, np.int64),
        content=content,
    )
    queries, have = content_queries(content, sessions)
    one_by_one = [table.content_query(session) for session in sessions]
    assert have.tolist() == [i for i, query in enumerate(one_by_one) if query is not None]
    for query, i in zip(queries, have.tolist(), strict=True):
        np.testing.assert_allclose(query, one_by_one[i], rtol=1e-5, atol=1e-6)
