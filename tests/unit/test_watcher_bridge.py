"""SnapshotWatcher and a new full snapshot: loaded off the swap path, its chain bridged onto the served
base meanwhile, then switched to (next_base.py, query.SnapshotWatcher)."""

import dataclasses
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
from recsim_stream.metrics import ApiMetrics
from recsim_stream.new_items import BackgroundBuild
from recsim_stream.next_base import NextBase
from recsim_stream.query import IndexHolder, SnapshotWatcher, build_main
from recsim_stream.snapshot import SnapshotArrays, SnapshotStore, folder_name
from recsim_stream.threads import ThreadPriority

INDEX = IndexConfig()


def _arrays(ids, counts):
    n = len(ids)
    angles = np.array([sum(map(ord, i)) % 360 for i in ids], np.float32) * np.pi / 180
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    return SnapshotArrays(
        ids=np.array(ids, dtype="U"),
        input_vectors=vectors,
        output_vectors=vectors.copy(),
        counts=np.array(counts, np.int64),
        cold=np.zeros(n, bool),
    )


def _write(store, version, ids, counts, parent=None, latest=True):
    store.write(
        version,
        _arrays(ids, counts),
        offsets={},
        newest_event_ts=None,
        parent_version=parent,
        make_latest=latest,
    )


def _gated_watcher(store, registry=None):
    """A watcher whose new bases finish loading only once ``gate`` is set (the first loads at once)."""
    gate = threading.Event()
    first = True

    def load_main(version):
        nonlocal first
        if not first:
            assert gate.wait(20)
        first = False
        return build_main(store.read(version), INDEX, store.read_index(version))

    holder = IndexHolder(ApiConfig(), ApiMetrics(registry or CollectorRegistry()))
    return SnapshotWatcher(store, holder, INDEX, poll_s=0.01, load_main=load_main), holder, gate


def _store(tmp_path, keep=20):
    return SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=keep))


def _served(holder):
    state = holder.state
    return state.version, state.main.version


def _interactions(holder, item):
    return holder.item(item)[1]["interactions"]


def _bridging(tmp_path):
    """Base 1 served; full snapshot 2 published with its catch-up delta 3 and polled once: base 2
    loads (until ``gate`` is set) while 3 is served on base 1."""
    store = _store(tmp_path)
    _write(store, 1, ["a", "b", "c"], [1, 1, 1])
    watcher, holder, gate = _gated_watcher(store)
    assert watcher.poll_once()
    _write(store, 2, ["a", "b", "c", "d"], [5, 1, 1, 1], latest=False)  # the new full snapshot
    _write(store, 3, ["d", "e"], [2, 1], parent=2)  # its catch-up delta
    assert watcher.poll_once()
    return store, watcher, holder, gate


def test_deltas_of_a_new_base_are_served_on_the_old_one_while_it_loads(tmp_path):
    store, watcher, holder, _gate = _bridging(tmp_path)
    assert _served(holder) == (3, 1)
    assert (_interactions(holder, "d"), _interactions(holder, "e")) == (2, 1)
    _write(store, 4, ["e"], [7], parent=3)
    assert watcher.poll_once()
    assert _served(holder) == (4, 1)
    assert _interactions(holder, "e") == 7


def test_once_the_new_base_is_loaded_the_same_version_is_served_on_it(tmp_path):
    _, watcher, holder, gate = _bridging(tmp_path)
    gate.set()
    assert watcher.wait_for_base(timeout=20)
    assert watcher.poll_once()
    assert _served(holder) == (3, 2)
    assert (_interactions(holder, "a"), _interactions(holder, "d"), _interactions(holder, "e")) == (5, 2, 1)
    assert watcher.poll_once() is False


def test_deltas_published_while_the_new_base_loads_are_in_the_state_switched_to(tmp_path):
    store, watcher, holder, gate = _bridging(tmp_path)  # the load began with the chain up to 3
    _write(store, 4, ["e"], [6], parent=3)
    watcher.poll_once()
    gate.set()
    watcher.wait_for_base(timeout=20)
    _write(store, 5, ["b"], [8], parent=4)
    assert watcher.poll_once()
    assert _served(holder) == (5, 2)
    assert [_interactions(holder, i) for i in "abcde"] == [5, 8, 1, 2, 6]


def test_a_new_base_takes_in_on_its_loading_thread_the_deltas_published_while_it_loaded(tmp_path):
    store, watcher, holder, gate = _bridging(tmp_path)  # the load began with the chain up to 3
    _write(store, 4, ["e"], [6], parent=3)
    gate.set()
    assert watcher.wait_for_base(timeout=20)
    log, appended = watcher._next.take()
    assert (appended, log.last.ids.row_of("e") >= 0) == (4, True)
    assert watcher.poll_once()
    assert _served(holder) == (4, 2)
    assert _interactions(holder, "e") == 6


def test_an_isolated_api_switches_to_a_new_base_only_once_its_cold_rows_index_is_built(tmp_path):
    # Before, the cold rows would be scanned exactly by every query (seconds at 1M items).
    store = _store(tmp_path)
    _write(store, 1, ["a", "b", "c"], [1, 1, 1])
    built = threading.Event()

    def load_main(version):
        main = build_main(store.read(version), INDEX, store.read_index(version))
        if version == 1:
            return main
        held = BackgroundBuild(lambda: built.wait(20) and None, ThreadPriority(), "held-cold-index")
        return dataclasses.replace(main, cold=dataclasses.replace(main.cold, index=held))

    holder = IndexHolder(ApiConfig())
    isolated = dataclasses.replace(INDEX, api_build_idle=True)
    watcher = SnapshotWatcher(store, holder, isolated, poll_s=0.01, load_main=load_main)
    assert watcher.poll_once()
    _write(store, 2, ["a", "b", "c", "d"], [5, 1, 1, 1], latest=False)
    _write(store, 3, ["d", "e"], [2, 1], parent=2)
    assert watcher.poll_once()
    assert (_served(holder), watcher.wait_for_base(timeout=0.5)) == ((3, 1), False)  # bridged meanwhile
    built.set()
    assert watcher.wait_for_base(timeout=20)
    assert watcher.poll_once()
    assert _served(holder) == (3, 2)


def test_the_switched_state_answers_like_a_fresh_load_of_its_version(tmp_path):
    store, watcher, holder, gate = _bridging(tmp_path)
    gate.set()
    watcher.wait_for_base(timeout=20)
    watcher.poll_once()
    fresh = IndexHolder(ApiConfig())
    assert SnapshotWatcher(store, fresh, INDEX, poll_s=0.01).poll_once()
    for item in "abcde":
        assert holder.similar(item, 4) == fresh.similar(item, 4)
        assert holder.item(item) == fresh.item(item)


def test_the_served_chains_skipped_deltas_are_bridged_before_the_new_bases(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"], [1, 1])
    watcher, holder, _gate = _gated_watcher(store)
    watcher.poll_once()
    _write(store, 2, ["c"], [3], parent=1)  # published, never polled
    _write(store, 3, ["a", "b", "c"], [1, 1, 3], latest=False)
    _write(store, 4, ["b"], [4], parent=3)
    assert watcher.poll_once()
    assert _served(holder) == (4, 1)
    assert (_interactions(holder, "b"), _interactions(holder, "c")) == (4, 3)


def test_a_new_base_is_not_bridged_when_the_served_chains_tail_was_pruned(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"], [1, 1])
    watcher, holder, gate = _gated_watcher(store)
    watcher.poll_once()
    _write(store, 2, ["c"], [3], parent=1)
    _write(store, 3, ["a", "b", "c"], [1, 1, 3], latest=False)
    _write(store, 4, ["b"], [4], parent=3)
    store.root.joinpath(folder_name(2), "manifest.json").unlink()
    assert watcher.poll_once() is False
    assert _served(holder) == (1, 1)
    gate.set()
    watcher.wait_for_base(timeout=20)
    assert watcher.poll_once()
    assert _served(holder) == (4, 3)


def test_a_new_base_that_fails_to_load_is_refused_once_and_its_deltas_still_bridged(tmp_path):
    registry = CollectorRegistry()
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"], [1, 1])
    watcher, holder, gate = _gated_watcher(store, registry)
    watcher.poll_once()
    _write(store, 2, ["a", "b", "c"], [1, 1, 1], latest=False)
    _write(store, 3, ["c"], [2], parent=2)
    (store.root / folder_name(2) / "ids.npy").write_bytes(b"garbage")
    assert watcher.poll_once()
    gate.set()
    watcher.wait_for_base(timeout=20)
    assert watcher.poll_once() is False
    assert registry.get_sample_value("recsim_snapshot_loads_refused_total", {"reason": "corrupt"}) == 1.0
    _write(store, 4, ["c"], [6], parent=3)
    assert watcher.poll_once()
    assert _served(holder) == (4, 1)
    assert _interactions(holder, "c") == 6
    assert registry.get_sample_value("recsim_snapshot_loads_refused_total", {"reason": "corrupt"}) == 1.0


def test_next_base_hands_over_its_result_or_its_error():
    built = NextBase(7, lambda: "main", ThreadPriority())
    assert built.wait(timeout=20)
    assert (built.version, built.take()) == (7, "main")
    failed = NextBase(8, lambda: 1 / 0, ThreadPriority())
    assert failed.wait(timeout=20)
    with pytest.raises(ZeroDivisionError):
        failed.take()
