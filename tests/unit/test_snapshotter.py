"""The snapshotter: what it publishes, and when, from shard exports (real store, real FAISS)."""

import dataclasses
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import recsim_stream.snapshotter as snapshotter_module
from recsim_stream.config import IndexConfig, SnapshotConfig
from recsim_stream.metrics import SnapshotMetrics
from recsim_stream.shard import ShardExport
from recsim_stream.snapshot import SnapshotArrays, SnapshotStore, apply_delta
from recsim_stream.snapshotter import LISTING_WAIT, DeferredArrays, PublishedCounts, Snapshotter

DIM = 8
SHIPPING = IndexConfig(exact_below=100, recall_sample=50, hnsw_ef_search=64)


class Shard:
    """One shard's rows, versioned as ParameterShard versions them."""

    def __init__(self, seed: int = 0, clustered: bool = True) -> None:
        self.version = 0
        self.rows: dict[int, tuple[np.ndarray, int, int]] = {}  # key -> (vector, count, version)
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.normal(size=(10, DIM)) if clustered else np.zeros((1, DIM))

    def train(self, keys) -> None:
        self.version += 1
        for key in keys:
            centre = self.centres[key % len(self.centres)]
            vector = (centre + 0.2 * self.rng.normal(size=DIM)).astype(np.float32)
            count = self.rows[key][1] + 1 if key in self.rows else 1
            self.rows[key] = (vector, count, self.version)

    def touch(self, keys) -> None:
        """Move vectors without counting an interaction, as negative sampling does."""
        self.version += 1
        for key in keys:
            vector, count, _ = self.rows[key]
            self.rows[key] = (vector + np.float32(0.1), count, self.version)

    def export(self, since: int | None) -> ShardExport:
        keys = sorted(k for k, (_, _, v) in self.rows.items() if since is None or v > since)
        vectors = np.array([self.rows[k][0] for k in keys], np.float32).reshape(-1, DIM)
        return ShardExport(
            version=self.version,
            keys=np.array(keys, np.int64),
            input=vectors,
            output=vectors.copy(),
            counts=np.array([self.rows[k][1] for k in keys], np.int64),
            versions=np.array([self.rows[k][2] for k in keys], np.int64),
            removed=np.zeros(0, np.int64),
        )


def _snapshotter(tmp_path, index=SHIPPING, full_every=20, registry=None):
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), full_every=full_every, keep=10))
    metrics = SnapshotMetrics(registry or CollectorRegistry())
    return Snapshotter(store.config, store, metrics, shards=1, index=index), store


def _take(
    snapshotter: Snapshotter, shard: Shard, complete=None, coming_rows=0, listed_rows=0, excluded=()
) -> None:
    since = snapshotter.since(coming_rows, listed_rows)
    snapshotter.take(
        [shard.export(since[0])],
        lambda keys: [f"item-{k}" for k in keys.tolist()],
        set(),
        {"events": {0: shard.version}},
        None,
        complete=complete,
        excluded=excluded,
    )
    snapshotter.wait()


def _with_content_rows(ids):
    """A cold start that adds a content-only row for each of ``ids`` (as Updater.complete_rows)."""

    def complete(arrays: SnapshotArrays, _full: bool) -> SnapshotArrays:
        vectors = np.ones((len(ids), DIM), np.float32)
        return apply_delta(
            arrays,
            SnapshotArrays(
                np.array(ids, dtype=str).reshape(-1),
                vectors,
                vectors,
                np.zeros(len(ids), np.int64),
                np.ones(len(ids), dtype=bool),
            ),
        )

    return complete


def test_nothing_is_published_before_anything_is_learned(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    _take(snapshotter, Shard())
    assert store.latest_version() is None


def test_a_small_catalogue_is_published_at_once_without_an_index(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(50))
    _take(snapshotter, shard)
    assert store.latest_version() == 1
    assert store.read_manifest(1).index is None


def test_no_snapshot_when_no_shard_version_moved(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(50))
    _take(snapshotter, shard)
    _take(snapshotter, shard)
    assert (store.versions(), snapshotter.published) == ([1], 1)


def test_a_large_first_snapshot_is_served_with_exact_indexes_while_its_own_build(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(500))
    _take(snapshotter, shard)
    assert (store.latest_version(), store.read_manifest(1).index["kind"]) == (1, "flat")


def test_a_large_catalogue_is_published_with_its_index_once_built(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(500))
    _take(snapshotter, shard)  # v1 with exact indexes; the approximate build starts
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([3, 600])
    _take(snapshotter, shard)  # v2: the full snapshot with its index, v3: the rows changed since its cut
    assert store.latest_version() == 3
    assert (store.read_manifest(2).index["kind"], store.read_manifest(3).parent_version) == ("hnsw", 2)
    served = store.load(3).arrays
    assert served.count == 501
    assert np.array_equal(served.input_vectors[served.ids.tolist().index("item-3")], shard.rows[3][0])


@pytest.fixture
def builds(monkeypatch):
    """Index builds wait for a permit: the test releases one per build it lets finish."""
    permits = threading.Semaphore(0)
    build = snapshotter_module.build_main_indexes

    def held(*args, **kwargs):
        assert permits.acquire(timeout=60)
        return build(*args, **kwargs)

    monkeypatch.setattr(snapshotter_module, "build_main_indexes", held)
    return permits


def test_deltas_go_on_while_the_index_builds_and_are_caught_up_after(tmp_path, builds):
    snapshotter, store = _snapshotter(tmp_path, full_every=2)
    shard = Shard()
    shard.train(range(500))
    _take(snapshotter, shard)  # v1: exact indexes while the first build runs
    builds.release()
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([1, 2])
    _take(snapshotter, shard)  # v2: full with its index, v3: rows 1 and 2; a full is due next
    shard.train([7])
    _take(snapshotter, shard)  # v4: row 7 on the current chain, while the next index builds
    shard.train([8, 700])
    _take(snapshotter, shard)  # v5: still on the current chain
    builds.release()
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([9])
    _take(snapshotter, shard)  # v6: the full (not made latest), v7: the rows changed since its cut
    parents = [store.read_manifest(v).parent_version for v in range(1, 8)]
    assert (parents, store.latest_version()) == ([None, None, 2, 3, 4, None, 6], 7)
    assert store.read_manifest(7).count == 3  # items 8, 700 and 9
    served = store.load(7).arrays
    by_id = dict(zip(served.ids.tolist(), served.input_vectors, strict=True))
    assert len(by_id) == 501
    assert all(np.array_equal(by_id[f"item-{k}"], shard.rows[k][0]) for k in (1, 7, 8, 9, 700))


def test_an_index_below_the_recall_gate_is_not_published_and_the_chain_goes_on(tmp_path):
    registry = CollectorRegistry()
    starved = IndexConfig(exact_below=100, kind="ivf", ivf_nlist=100, ivf_nprobe=1, recall_sample=50)
    snapshotter, store = _snapshotter(tmp_path, index=starved, registry=registry)
    shard = Shard(clustered=False)
    shard.train(range(3000))
    _take(snapshotter, shard)  # v1: exact indexes while the (refused) build runs
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([9])
    _take(snapshotter, shard)
    assert [store.read_manifest(v).parent_version for v in store.versions()] == [None, 1]
    assert registry.get_sample_value("recsim_snapshots_refused_total", {"reason": "recall"}) == 1.0


def test_a_full_snapshot_comes_early_once_half_its_rows_changed(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(50))
    _take(snapshotter, shard)  # v1: full
    shard.train(range(10))
    _take(snapshotter, shard)  # v2: 10 changed rows
    shard.train(range(10, 30))
    _take(snapshotter, shard)  # v3: 30 of 50 changed rows
    shard.train([0])
    _take(snapshotter, shard)
    assert [store.read_manifest(v).parent_version for v in store.versions()] == [None, 1, 2, None]


def test_a_full_snapshot_waits_while_a_listing_being_encoded_would_change_half_of_it(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(50))
    _take(snapshotter, shard)  # v1: full
    shard.train(range(30))
    _take(snapshotter, shard, coming_rows=25)  # v2: 30 of 50 changed, but 25 rows are coming
    shard.train([0])
    _take(snapshotter, shard, coming_rows=25)  # v3: still a delta
    shard.train([1])
    _take(snapshotter, shard, coming_rows=24)  # v4: the listing is nearly in: full
    assert [store.read_manifest(v).parent_version for v in store.versions()] == [None, 1, 2, None]


def test_a_full_snapshot_waits_while_a_listing_flows_though_its_encoding_caught_up(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(50))
    _take(snapshotter, shard)  # v1: full
    shard.train(range(30))
    _take(snapshotter, shard, listed_rows=5)  # v2: 30 of 50 changed; 5 listed since v1, 5 x 5 to come
    shard.train([0])
    _take(snapshotter, shard, listed_rows=4)  # v3: 4 x 5 = 20 rows to come, under half of 50: full
    assert [store.read_manifest(v).parent_version for v in store.versions()] == [None, 1, None]


def test_a_listing_holds_back_a_full_snapshot_only_so_long(tmp_path):
    snapshotter, store = _snapshotter(tmp_path, full_every=1)
    shard = Shard()
    shard.train(range(50))
    _take(snapshotter, shard)  # v1: full
    for _ in range(LISTING_WAIT + 1):
        shard.train([0])
        _take(snapshotter, shard, coming_rows=1000)
    kinds = [store.read_manifest(v).parent_version is None for v in store.versions()]
    # LISTING_WAIT snapshots after the full (itself included), a full all the same
    assert kinds == [True] + [False] * (LISTING_WAIT - 1) + [True, False]


def test_a_full_snapshot_comes_early_when_the_cold_start_alone_added_half_its_rows(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(50))
    _take(snapshotter, shard)  # v1: full
    _take(snapshotter, shard, _with_content_rows([f"new-{j}" for j in range(30)]))  # v2: 30 new rows
    _take(snapshotter, shard, _with_content_rows(["new-30"]))  # no shard moved, but a full is due
    assert [store.read_manifest(v).parent_version for v in store.versions()] == [None, 1, None]
    assert store.read_manifest(3).count == 51


def test_deltas_go_on_while_a_full_snapshot_is_written(tmp_path, builds):
    snapshotter, store = _snapshotter(tmp_path, full_every=2)
    writing, written = threading.Event(), threading.Semaphore(0)
    prepare = store.prepare

    def held(*args, **kwargs):
        if threading.current_thread().name == "index-build":  # not the writer's own deltas
            writing.set()
            assert written.acquire(timeout=60)
        return prepare(*args, **kwargs)

    store.prepare = held
    shard = Shard()
    shard.train(range(500))
    _take(snapshotter, shard)  # v1: exact indexes while the first build runs
    builds.release()
    assert writing.wait(timeout=60)  # the build thread now writes the full snapshot's files
    shard.train([3])
    _take(snapshotter, shard)  # v2: a delta on v1 meanwhile
    written.release()
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([4])
    _take(snapshotter, shard)  # v3: the full one, v4: rows 3 and 4 on it
    parents = [store.read_manifest(v).parent_version for v in range(1, 5)]
    assert (parents, store.latest_version(), store.read_manifest(4).count) == ([None, 1, None, 3], 4, 2)


def test_a_delta_leaves_out_rows_that_moved_only_as_negative_samples(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(50))
    _take(snapshotter, shard)  # v1: full
    shard.train([1])
    shard.touch([2, 3])  # vectors moved, counts did not
    _take(snapshotter, shard)
    assert store.read(2).arrays.ids.tolist() == ["item-1"]


def test_published_counts_say_which_rows_are_new_or_counted_again():
    counts = PublishedCounts()
    counts.reset(np.array([5, 1, 3]), np.array([50, 10, 30]))
    counts.update(np.array([3, 7]), np.array([31, 70]))
    moved = counts.moved(np.array([1, 3, 7, 9]), np.array([10, 31, 71, 1]))
    assert moved.tolist() == [False, False, True, True]


def _small_base_then_a_large_delta(snapshotter: Snapshotter, shard: Shard, complete=None) -> None:
    """v1: 50 rows, flat (the API builds it); v2: a delta of 450 rows, after which a full is due."""
    shard.train(range(50))
    _take(snapshotter, shard, complete)
    shard.train(range(50, 500))
    _take(snapshotter, shard, complete)


def test_a_large_cut_on_a_small_base_is_published_exact_then_with_its_approximate_index(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    _small_base_then_a_large_delta(snapshotter, shard)
    shard.train([1])
    _take(snapshotter, shard)  # v3: row 1, while the exact full's files are written
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([2])
    _take(snapshotter, shard)  # v4: the exact full, v5: row 2 on it
    shard.train([3])
    _take(snapshotter, shard)  # v6: row 3, while the approximate index builds
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([4])
    _take(snapshotter, shard)  # v7: the approximate full, v8: row 4 on it
    kinds = [(store.read_manifest(v).index or {}).get("kind") for v in (4, 7)]
    assert (kinds, store.latest_version(), store.read_manifest(8).parent_version) == (["flat", "hnsw"], 8, 7)


def test_an_exact_full_gets_its_approximate_index_though_nothing_changes_after_it(tmp_path):
    """A catalogue listed before any traffic: served exactly only until the approximate build."""
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    _small_base_then_a_large_delta(snapshotter, shard)  # then nothing changes any more
    for _ in range(6):
        _take(snapshotter, shard)
        assert snapshotter.wait_for_index(timeout=60)
    fulls = [
        store.read_manifest(v) for v in store.versions() if store.read_manifest(v).parent_version is None
    ]
    kinds = [((m.index or {}).get("kind"), m.count) for m in fulls]
    assert kinds == [(None, 50), ("flat", 500), ("hnsw", 500)]
    assert store.latest_version() == fulls[-1].version
    published = snapshotter.published
    _take(snapshotter, shard)
    assert snapshotter.published == published  # and then it stays idle


def test_a_large_full_snapshots_rows_are_assembled_by_its_build_thread(tmp_path):
    """The bulk of a full snapshot (the cold start's content-only rows) is not the loop's work."""
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    assembled_on: list[str] = []

    def complete(arrays: SnapshotArrays, full: bool):
        if not full:
            return arrays

        def assemble() -> SnapshotArrays:
            assembled_on.append(threading.current_thread().name)
            return arrays

        return DeferredArrays(arrays.count, assemble)

    _small_base_then_a_large_delta(snapshotter, shard, complete)  # v1 assembled at once
    shard.train([1])
    _take(snapshotter, shard, complete)  # v3: row 1; the exact full builds
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([2])
    _take(snapshotter, shard, complete)  # v4: the exact full, v5: row 2 on it
    assert assembled_on == [threading.current_thread().name, "index-build"]
    assert store.read(4).arrays.count == 500


class Deleting:
    """Items deleted from the catalogue, as the updater hands them to a snapshot: their ids left out
    of every export (``excluded``), and a delta's ``complete`` naming those deleted since the last
    snapshot (Updater.complete_rows)."""

    def __init__(self) -> None:
        self.deleted = LookupOnly()
        self.pending: set[str] = set()

    def delete(self, *keys: int) -> None:
        self.deleted.update(f"item-{k}" for k in keys)
        self.pending.update(f"item-{k}" for k in keys)

    def complete(self, rows: SnapshotArrays, full: bool) -> SnapshotArrays:
        removed, self.pending = sorted(self.pending), set()
        if full or not removed:
            return rows
        return dataclasses.replace(rows, removed_ids=np.array(removed, dtype=str))

    def take(self, snapshotter: Snapshotter, shard: Shard) -> None:
        _take(snapshotter, shard, self.complete, excluded=self.deleted)


class LookupOnly(set):
    """The deleted items as a snapshot may use them: asked whether an exported id is among them,
    never walked (their number grows over a system's life; a snapshot costs what it exports)."""

    def __iter__(self):
        raise AssertionError("a snapshot walked the whole deleted set")


def test_a_delta_that_only_removes_ids_is_published_though_no_shard_moved(tmp_path):
    snapshotter, store = _snapshotter(tmp_path)
    shard, deleting = Shard(), Deleting()
    shard.train(range(50))
    deleting.take(snapshotter, shard)
    deleting.delete(3, 4)
    deleting.take(snapshotter, shard)
    deleting.take(snapshotter, shard)  # nothing moved and nothing removed: nothing to publish
    shard.train([3, 5])  # a deleted item clicked again stays out
    deleting.take(snapshotter, shard)
    assert store.versions() == [1, 2, 3]
    assert store.read(2).arrays.removed_ids.tolist() == ["item-3", "item-4"]
    assert store.read(3).arrays.ids.tolist() == ["item-5"]
    served = store.load(3).arrays.ids.tolist()
    assert len(served) == 48 and "item-3" not in served and "item-4" not in served


def test_a_removal_while_the_full_snapshot_builds_reaches_its_catch_up_delta(tmp_path, builds):
    snapshotter, store = _snapshotter(tmp_path, full_every=2)
    shard, deleting = Shard(), Deleting()
    shard.train(range(500))
    deleting.take(snapshotter, shard)  # v1: exact indexes while the first build runs
    builds.release()
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([1, 2])
    deleting.take(snapshotter, shard)  # v2: full with its index, v3: rows 1 and 2; a full is due next
    shard.train([7])
    deleting.take(snapshotter, shard)  # v4: on the current chain, while the next index builds from its cut
    deleting.delete(7, 40)
    deleting.take(snapshotter, shard)  # v5: the removal, on the current chain
    builds.release()
    assert snapshotter.wait_for_index(timeout=60)
    shard.train([7, 9])  # a deleted item clicked again stays out of the catch-up too
    deleting.take(snapshotter, shard)  # v6: the full cut before the removal, v7: its catch-up
    parents = [store.read_manifest(v).parent_version for v in range(1, 8)]
    assert (parents, store.latest_version()) == ([None, None, 2, 3, 4, None, 6], 7)
    assert "item-7" in store.read(6).arrays.ids.tolist()
    assert store.read(7).arrays.removed_ids.tolist() == ["item-40", "item-7"]
    assert store.read(7).arrays.ids.tolist() == ["item-9"]
    served = store.load(7).arrays.ids.tolist()
    assert len(served) == 498 and not {"item-7", "item-40"} & set(served)
    assert not {"item-7", "item-40"} & set(store.load(5).arrays.ids.tolist())


def test_an_expired_row_that_comes_back_with_its_old_count_is_published_again(tmp_path):
    """Deltas skip rows whose count did not move; an expired row's comeback must not look like that."""
    snapshotter, store = _snapshotter(tmp_path)
    shard = Shard()
    shard.train(range(10))  # every count 1
    _take(snapshotter, shard)

    def removing_item_3(arrays: SnapshotArrays, full: bool) -> SnapshotArrays:
        return arrays if full else dataclasses.replace(arrays, removed_ids=np.array(["item-3"]))

    del shard.rows[3]  # the shard expired it
    shard.version += 1
    snapshotter.expired(np.array([3]))
    _take(snapshotter, shard, complete=removing_item_3)
    assert "item-3" not in store.load(store.latest_version()).arrays.ids.tolist()
    shard.train([3])  # clicked again: count 1, as published before it expired
    _take(snapshotter, shard)
    assert "item-3" in store.load(store.latest_version()).arrays.ids.tolist()
