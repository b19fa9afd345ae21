"""Scoring's mixture: what the new-item component may recommend."""

from __future__ import annotations

import numpy as np

from recsim_stream.scoring import Embeddings

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
