"""The query API applies the new-item share of the session's state: after a cold item, new items
are likelier (they come in runs), as in ``scoring.Embeddings``."""

import numpy as np

from recsim_stream.config import ApiConfig, IndexConfig
from recsim_stream.query import IndexHolder, build_main, build_state, empty_like
from recsim_stream.snapshot import Snapshot, SnapshotArrays, SnapshotManifest


def _holder(scoring: dict[str, float]) -> IndexHolder:
    # k0, k1 learned (k1 the likelier next item after either); c0, c1 cold, with the same content.
    arrays = SnapshotArrays(
        ids=np.array(["k0", "k1", "c0", "c1"]),
        input_vectors=np.ones((4, 2), np.float32),
        output_vectors=np.array([[0, 0], [1, 0], [0, 0], [0, 0]], np.float32),
        counts=np.array([5, 5, 0, 0], np.int64),
        cold=np.array([False, False, True, True]),
        content_vectors=np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32),
    )
    manifest = SnapshotManifest(1, "full", 1, None, 2, arrays.count, {}, None, 0.0, scoring=scoring)
    config = IndexConfig()
    main = build_main(Snapshot(manifest, arrays), config, background=False)
    holder = IndexHolder(ApiConfig())
    holder.swap(build_state(main, empty_like(arrays), manifest, config))
    return holder


def _top(holder: IndexHolder, items: list[str]) -> str:
    return holder.recommend(items, 1)[1][0][0]


def test_after_a_cold_item_the_api_takes_the_after_cold_share():
    holder = _holder({"new_item_share": 1e-4, "new_item_share_after_cold": 0.99, "cold_temperature": 0.1})
    assert (_top(holder, ["k0"]), _top(holder, ["c1"])) == ("k1", "c0")


def test_a_snapshot_with_one_share_applies_it_after_any_item():
    holder = _holder({"new_item_share": 1e-4, "cold_temperature": 0.1})
    assert (_top(holder, ["k0"]), _top(holder, ["c1"])) == ("k1", "k1")
