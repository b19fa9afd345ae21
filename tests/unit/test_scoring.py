"""Scoring's mixture: what the new-item component may recommend."""

from __future__ import annotations

import numpy as np

from recsim_stream.scoring import Embeddings, content_queries

# Unit content vectors: i1 is i0's twin, i2 is orthogonal to both, i3 close to i0.
_CONTENT = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], dtype=np.float32)


def _all_cold_table(content: np.ndarray | None) -> Embeddings:
    n = len(_CONTENT)
    return Embeddings(
        [f"i{k}" for k in range(n)],
        np.zeros((n, 2), dtype=np.float32),
        np.zeros((n, 2), dtype=np.float32),
        np.zeros(n, dtype=np.int64),
        cold=np.ones(n, dtype=bool),
        new_item_share=0.9,
        content=content,
        cold_temperature=0.01,
    )


def test_the_new_item_component_never_recommends_an_item_of_the_session():
    assert _all_cold_table(_CONTENT).recommend(["i0", "i1"], 2) == ["i3", "i2"]


def test_without_content_the_new_item_component_still_leaves_out_the_session():
    assert set(_all_cold_table(None).recommend(["i0", "i1"], 2)) == {"i2", "i3"}


def test_after_a_cold_item_the_new_item_component_takes_the_after_cold_share():
    # k0, k1: learned (k1 the likelier next item); c0, c1: cold, c0's content next to both k0's and c1's.
    table = Embeddings(
        ["k0", "k1", "c0", "c1"],
        np.ones((4, 2), dtype=np.float32),
        np.array([[0, 0], [1, 0], [0, 0], [0, 0]], dtype=np.float32),
        np.array([5, 5, 0, 0]),
        cold=np.array([False, False, True, True]),
        new_item_share=0.01,
        content=np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32),
        cold_temperature=0.1,
        new_item_share_after_cold=0.99,
    )
    assert (table.share_after("k0"), table.share_after("c1"), table.share_after("unknown")) == (
        0.01,
        0.99,
        0.99,
    )
    assert table.recommend(["k0"], 1) == ["k1"]
    assert table.recommend(["c1"], 1) == ["c0"]


def test_content_queries_weigh_the_newest_rows_with_content_and_skip_sessions_without_any():
    content = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)  # row 2: no metadata
    # Session 0: rows 0, 2, 1 -> row 1 weighs 1, row 0 (the next older one with content) 0.5.
    queries, have = content_queries(content, [[0, 2, 1], [2], [], [1, 1, 0, 0]])
    assert have.tolist() == [0, 3]
    np.testing.assert_allclose(queries[0], np.array([0.5, 1.0]) / np.hypot(0.5, 1.0), rtol=1e-6)
    # Session 3: only its last three positions count (1, 0, 0): weights 0.25, 0.5, 1.
    np.testing.assert_allclose(queries[1], np.array([1.5, 0.25]) / np.hypot(1.5, 0.25), rtol=1e-6)
