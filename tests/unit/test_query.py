import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
from recsim_stream.delta_log import IdLookup
from recsim_stream.index import ExactRows, build_main_indexes, ship
from recsim_stream.metrics import ApiMetrics
from recsim_stream.new_items import MainCold, NewItems
from recsim_stream.query import (
    IndexHolder,
    NotReady,
    SnapshotWatcher,
    UnknownItem,
    build_main,
    build_state,
    empty_like,
)
from recsim_stream.snapshot import Snapshot, SnapshotArrays, SnapshotManifest, SnapshotStore, folder_name

INDEX = IndexConfig()


def _arrays(ids, inputs, outputs=None, counts=None):
    inputs = np.array(inputs, np.float32)
    n = len(ids)
    return SnapshotArrays(
        ids=np.array(ids, dtype="U"),
        input_vectors=inputs,
        output_vectors=inputs.copy() if outputs is None else np.array(outputs, np.float32),
        counts=np.arange(n, dtype=np.int64) if counts is None else np.array(counts, np.int64),
        cold=np.array([i == n - 1 for i in range(n)], dtype=bool),
    )


CATALOGUE = _arrays(
    ["a", "b", "c", "d"],
    inputs=[[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]],
    # What follows "a" in sessions is "c": its output vector points along a's input vector.
    outputs=[[0, 1], [0, 1], [1, 0], [-1, 0]],
)


def _holder(arrays=CATALOGUE, version=1, metrics=None):
    holder = IndexHolder(ApiConfig(session_items=2), metrics)
    manifest = SnapshotManifest(version, "full", version, None, arrays.dim, arrays.count, {}, None, 0.0)
    main = build_main(Snapshot(manifest, arrays), INDEX)
    holder.swap(build_state(main, empty_like(arrays), manifest, INDEX))
    return holder


def test_queries_before_any_snapshot_are_not_ready():
    with pytest.raises(NotReady):
        IndexHolder(ApiConfig()).similar("a", 3)


def test_similar_returns_cosine_neighbours_without_the_item_itself():
    version, results = _holder().similar("a", 2)
    assert version == 1
    assert [i for i, _ in results] == ["b", "d"]


def test_similar_of_an_unknown_item_raises():
    with pytest.raises(UnknownItem):
        _holder().similar("zzz", 2)


def test_recommend_scores_input_against_output_vectors():
    _, results, unknown = _holder().recommend(["a"], 1)
    assert results[0][0] == "c"
    assert unknown == []


def test_recommend_never_returns_session_or_excluded_items():
    _, results, _ = _holder().recommend(["a"], 4, exclude=["c"])
    assert {i for i, _ in results} == {"b", "d"}


def test_recommend_reports_and_ignores_unknown_items():
    _, results, unknown = _holder().recommend(["nope", "a"], 1)
    assert unknown == ["nope"]
    assert results[0][0] == "c"


def test_recommend_with_only_unknown_items_raises():
    with pytest.raises(UnknownItem):
        _holder().recommend(["nope"], 3)


def test_item_returns_vector_count_and_cold_flag():
    _, row = _holder().item("d")
    assert row == {
        "item_id": "d",
        "vector": [pytest.approx(0.1), pytest.approx(0.9)],
        "interactions": 3,
        "cold": True,
    }


def test_swap_ignores_an_older_version():
    holder = _holder(version=5)
    older = _holder(version=3).state
    assert holder.swap(older) is False
    assert holder.state.version == 5


def _store(tmp_path, keep=5):
    return SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=keep))


def _watcher(store, registry=None, index=INDEX):
    metrics = ApiMetrics(registry or CollectorRegistry())
    holder = IndexHolder(ApiConfig(), metrics)
    return SnapshotWatcher(store, holder, index, poll_s=0.01), holder


def test_watcher_loads_the_latest_full_snapshot(tmp_path):
    store = _store(tmp_path)
    store.write(1, CATALOGUE, offsets={"events": {0: 5}}, newest_event_ts=1.0)
    watcher, holder = _watcher(store)
    assert watcher.poll_once() is True
    assert holder.snapshot_info()["items"] == 4
    assert watcher.poll_once() is False


def test_watcher_applies_a_delta_on_top_of_the_served_base(tmp_path):
    store = _store(tmp_path)
    store.write(1, CATALOGUE, offsets={}, newest_event_ts=None)
    watcher, holder = _watcher(store)
    watcher.poll_once()
    main = holder.state.main
    store.write(
        2,
        _arrays(["d", "e"], inputs=[[1, 0], [0, -1]], counts=[9, 1]),
        offsets={},
        newest_event_ts=None,
        parent_version=1,
    )
    assert watcher.poll_once() is True
    assert holder.state.main is main  # the approximate indexes were not rebuilt
    assert holder.item("d")[1]["interactions"] == 9
    assert holder.snapshot_info()["items"] == 5
    _, results = holder.similar("a", 4)
    assert [i for i, _ in results][:2] == ["d", "b"]
    assert [i for i, _ in results].count("d") == 1


def test_watcher_keeps_serving_when_a_snapshot_is_corrupt(tmp_path):
    registry = CollectorRegistry()
    store = _store(tmp_path)
    store.write(1, CATALOGUE, offsets={}, newest_event_ts=None)
    watcher, holder = _watcher(store, registry)
    watcher.poll_once()
    store.write(2, CATALOGUE, offsets={}, newest_event_ts=None)
    (store.root / folder_name(2) / "ids.npy").write_bytes(b"garbage")
    assert watcher.poll_once() is False  # a new base: loaded off the swap path, refused when it fails
    assert watcher.wait_for_base(timeout=20)
    assert watcher.poll_once() is False
    assert holder.state.version == 1
    assert registry.get_sample_value("recsim_snapshot_loads_refused_total", {"reason": "corrupt"}) == 1.0
    watcher.poll_once()  # a refused version is not retried (nor counted) again
    assert registry.get_sample_value("recsim_snapshot_loads_refused_total", {"reason": "corrupt"}) == 1.0


def test_watcher_refuses_an_index_below_the_recall_gate(tmp_path):
    registry = CollectorRegistry()
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    arrays = _arrays([f"i{j}" for j in range(2000)], inputs=vectors)
    store = _store(tmp_path)
    store.write(1, arrays, offsets={}, newest_event_ts=None)
    starved = IndexConfig(exact_below=100, kind="ivf", ivf_nlist=100, ivf_nprobe=1, recall_sample=50)
    watcher, holder = _watcher(store, registry, index=starved)
    assert watcher.poll_once() is False
    assert holder.state is None
    assert registry.get_sample_value("recsim_snapshot_loads_refused_total", {"reason": "recall"}) == 1.0


def test_watcher_thread_swaps_in_each_notified_version(tmp_path):
    store = _store(tmp_path)
    watcher, holder = _watcher(store)
    swapped = threading.Event()
    real_swap = holder.swap

    def swap_and_signal(state):
        done = real_swap(state)
        if state.version == 3:
            swapped.set()
        return done

    holder.swap = swap_and_signal
    watcher.start()
    try:
        store.write(1, CATALOGUE, offsets={}, newest_event_ts=None)
        store.write(3, CATALOGUE, offsets={}, newest_event_ts=None)
        watcher.notify()
        assert swapped.wait(timeout=20)
    finally:
        watcher.stop()
    assert holder.state.version == 3


def _clustered_arrays(n, seed=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 16))
    vectors = (centres[rng.integers(0, 20, n)] + 0.2 * rng.normal(size=(n, 16))).astype(np.float32)
    return _arrays([f"i{j}" for j in range(n)], inputs=vectors, counts=np.ones(n, np.int64))


SHIPPING = IndexConfig(exact_below=100, recall_sample=50, hnsw_ef_search=64)


def _shipped(arrays):
    return ship(build_main_indexes(arrays.input_vectors, arrays.output_vectors, arrays.counts, SHIPPING))


def test_watcher_serves_a_shipped_index_without_building_one(tmp_path):
    arrays = _clustered_arrays(2000)
    store = _store(tmp_path)
    store.write(1, arrays, offsets={}, newest_event_ts=None, index=_shipped(arrays))
    # Building here would fail this gate: the watcher must take the shipped index as it is.
    starved = IndexConfig(exact_below=100, kind="ivf", ivf_nlist=100, ivf_nprobe=1, recall_sample=50)
    watcher, holder = _watcher(store, index=starved)
    assert watcher.poll_once() is True
    info = holder.snapshot_info()
    assert (info["index_kind"], info["index_shipped"], info["items"]) == ("hnsw", True, 2000)


def test_watcher_refuses_a_shipped_index_over_other_rows_and_keeps_serving(tmp_path):
    registry = CollectorRegistry()
    arrays = _clustered_arrays(2000)
    store = _store(tmp_path)
    store.write(1, CATALOGUE, offsets={}, newest_event_ts=None)
    watcher, holder = _watcher(store, registry)
    watcher.poll_once()
    store.write(2, arrays, offsets={}, newest_event_ts=None, index=_shipped(_clustered_arrays(1500)))
    assert watcher.poll_once() is False
    assert watcher.wait_for_base(timeout=20)
    assert watcher.poll_once() is False
    assert holder.state.version == 1
    assert registry.get_sample_value("recsim_snapshot_loads_refused_total", {"reason": "corrupt"}) == 1.0


def test_watcher_builds_the_index_of_a_snapshot_that_ships_none(tmp_path):
    store = _store(tmp_path)
    store.write(1, _clustered_arrays(2000), offsets={}, newest_event_ts=None)
    watcher, holder = _watcher(store, index=SHIPPING)
    watcher.poll_once()
    assert (holder.snapshot_info()["index_kind"], holder.snapshot_info()["index_shipped"]) == ("hnsw", False)


def _manifest(version, newest_event_ts, newest_record_ts):
    return SnapshotManifest(
        version, "full", version, None, 2, 4, {}, newest_event_ts, 0.0, newest_record_ts=newest_record_ts
    )


def test_freshness_is_measured_from_the_newest_record_timestamp():
    registry = CollectorRegistry()
    holder = IndexHolder(ApiConfig(), ApiMetrics(registry), clock=lambda: 101.5)
    manifest = _manifest(1, newest_event_ts=5000.0, newest_record_ts=100.0)
    main = build_main(Snapshot(manifest, CATALOGUE), INDEX)
    holder.swap(build_state(main, empty_like(CATALOGUE), manifest, INDEX))
    assert registry.get_sample_value("recsim_freshness_seconds_sum") == 1.5


def test_freshness_is_not_measured_from_event_time():
    registry = CollectorRegistry()
    holder = IndexHolder(ApiConfig(), ApiMetrics(registry), clock=lambda: 101.5)
    manifest = _manifest(1, newest_event_ts=50.0, newest_record_ts=None)
    main = build_main(Snapshot(manifest, CATALOGUE), INDEX)
    holder.swap(build_state(main, empty_like(CATALOGUE), manifest, INDEX))
    assert registry.get_sample_value("recsim_freshness_seconds_count") == 0.0


def test_id_lookup_finds_positions_with_its_offset():
    lookup = IdLookup(np.array(["b", "a", "ccc"]), offset=10)
    assert (lookup["a"], lookup.get("ccc"), lookup.get("cc"), "zz" in lookup) == (11, 12, None, False)


def test_id_lookup_maps_many_ids_at_once():
    lookup = IdLookup(np.array(["b", "a", "ccc"]))
    assert lookup.positions_of(np.array(["ccc", "x", "b"])).tolist() == [2, -1, 0]


def _new_items(dead=()):
    """Cold rows at positions 10 and 11 (main, searched exactly) and 12 (delta)."""
    content = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    main_dead = np.isin(np.arange(2), dead)
    main = MainCold(
        positions=np.array([10, 11]),
        content=content[:2],
        outputs=np.zeros((2, 2), np.float32),
        sample=np.arange(2),
        sample_content=content[:2],
        index=None,
    )
    return NewItems(
        share=0.1,
        share_after_cold=0.1,
        temperature=0.5,
        main=main,
        main_run=None,
        main_dead=main_dead,
        main_live=int((~main_dead).sum()),
        delta_runs=(),
        delta_content=ExactRows(content[2:], np.array([12])),
        delta_outputs=ExactRows(np.zeros((1, 3), np.float32), np.array([12])),
        delta_live=1,
        head=256,
        known_rows=0,
        tail=np.zeros((0, 3), np.float32),
        tail_positions=np.zeros(0, np.int64),
    )


def test_new_items_rank_cold_rows_by_their_softmax_over_content_cosines():
    log_p, positions = _new_items().best(np.array([1, 0], np.float32), np.zeros(2, np.float32), 3, set())
    logits = np.array([1.0, 0.8, 0.0]) / 0.5
    expected = logits - np.log(np.exp(logits).sum())
    assert positions.tolist() == [10, 11, 12]
    np.testing.assert_allclose(log_p, expected, rtol=1e-5)


def test_new_items_never_return_banned_or_dead_rows():
    _, positions = _new_items(dead=[1]).best(np.array([1, 0], np.float32), np.zeros(2, np.float32), 3, {10})
    assert positions.tolist() == [12]
