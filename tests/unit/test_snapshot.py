import dataclasses
import json
import os

import numpy as np
import pytest

from recsim_stream.config import SnapshotConfig
from recsim_stream.snapshot import (
    LATEST,
    SnapshotArrays,
    SnapshotError,
    SnapshotStore,
    apply_delta,
    folder_name,
)


def _arrays(ids, dim=3, fill=0.0):
    n = len(ids)
    vectors = np.arange(n * dim, dtype=np.float32).reshape(n, dim) + np.float32(fill)
    return SnapshotArrays(
        ids=np.array(ids, dtype="U"),
        input_vectors=vectors,
        output_vectors=-vectors,
        counts=np.arange(n, dtype=np.int64),
        cold=np.array([i % 2 == 0 for i in range(n)], dtype=bool),
    )


def _store(tmp_path, keep=5):
    return SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=keep), clock=lambda: 1000.0)


def _write(store, version, ids, parent=None, fill=0.0):
    return store.write(
        version,
        _arrays(ids, fill=fill),
        offsets={"events": {0: 10, 1: 7}},
        newest_event_ts=99.5,
        parent_version=parent,
    )


def test_round_trip_returns_the_same_arrays_and_manifest(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b", "ü-ß-😀"])
    loaded = store.read(1)
    expected = _arrays(["a", "b", "ü-ß-😀"])
    for name in ("ids", "input_vectors", "output_vectors", "counts", "cold"):
        assert np.array_equal(getattr(loaded.arrays, name), getattr(expected, name))
    assert loaded.manifest.offsets == {"events": {0: 10, 1: 7}}
    assert loaded.manifest.newest_event_ts == 99.5
    assert loaded.manifest.created_at == 1000.0
    assert (loaded.manifest.kind, loaded.manifest.dim, loaded.manifest.count) == ("full", 3, 3)


def test_latest_points_at_the_newest_write(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    _write(store, 4, ["a"])
    assert store.latest_version() == 4


def test_latest_falls_back_to_the_newest_folder_without_a_pointer(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    _write(store, 2, ["a"])
    os.remove(store.root / LATEST)
    assert store.latest_version() == 2


def test_empty_directory_has_no_latest(tmp_path):
    assert _store(tmp_path).latest_version() is None


def test_version_must_increase(tmp_path):
    store = _store(tmp_path)
    _write(store, 3, ["a"])
    with pytest.raises(SnapshotError, match="above the latest"):
        _write(store, 3, ["a"])


def test_temporary_folders_are_not_listed_as_versions(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    (store.root / f".tmp-{folder_name(2)}-abcd").mkdir()
    assert store.versions() == [1]


def test_a_failed_write_leaves_no_folder_behind(tmp_path):
    store = _store(tmp_path)
    bad = _arrays(["a", "a"])  # duplicate ids are refused before anything is written
    with pytest.raises(SnapshotError, match="distinct"):
        store.write(1, bad, offsets={}, newest_event_ts=None)
    assert store.versions() == []


def test_non_finite_vectors_are_refused_at_write(tmp_path):
    arrays = _arrays(["a"])
    arrays.input_vectors[0, 0] = np.nan
    with pytest.raises(SnapshotError, match="finite"):
        _store(tmp_path).write(1, arrays, offsets={}, newest_event_ts=None)


def test_object_arrays_are_refused():
    with pytest.raises(SnapshotError, match="unicode"):
        SnapshotArrays(
            ids=np.array(["a"], dtype=object),
            input_vectors=np.zeros((1, 2), np.float32),
            output_vectors=np.zeros((1, 2), np.float32),
            counts=np.zeros(1, np.int64),
            cold=np.zeros(1, bool),
        )


def test_a_flipped_byte_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"])
    path = store.root / folder_name(1) / "input_vectors.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="sha256"):
        store.read(1)


def test_a_truncated_array_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"])
    path = store.root / folder_name(1) / "output_vectors.npy"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SnapshotError, match="corrupt or partial"):
        store.read(1)


def test_a_missing_array_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    os.remove(store.root / folder_name(1) / "counts.npy")
    with pytest.raises(SnapshotError, match="cannot read counts"):
        store.read(1)


def _edit_manifest(store, version, edit):
    path = store.root / folder_name(version) / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def test_a_manifest_shape_that_disagrees_with_the_file_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"])
    _edit_manifest(store, 1, lambda m: m["files"]["counts"].update(shape=[3]))
    with pytest.raises(SnapshotError, match="manifest says int64"):
        store.read(1)


def test_a_manifest_count_that_disagrees_with_the_arrays_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"])
    _edit_manifest(store, 1, lambda m: m.update(count=5))
    with pytest.raises(SnapshotError, match="manifest says 5 rows"):
        store.read(1)


def test_a_manifest_for_another_version_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    _edit_manifest(store, 1, lambda m: m.update(version=2))
    with pytest.raises(SnapshotError, match="expected version 1, got 2"):
        store.read(1)


def test_a_manifest_without_a_field_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    _edit_manifest(store, 1, lambda m: m.pop("dim"))
    with pytest.raises(SnapshotError, match="malformed manifest"):
        store.read(1)


def test_a_manifest_that_is_not_json_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    (store.root / folder_name(1) / "manifest.json").write_text("{not json")
    with pytest.raises(SnapshotError, match="unreadable manifest"):
        store.read(1)


def test_a_pickled_array_is_refused_without_unpickling(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    folder = store.root / folder_name(1)
    np.save(folder / "ids.npy", np.array(["a"], dtype=object), allow_pickle=True)
    import hashlib

    digest = hashlib.sha256((folder / "ids.npy").read_bytes()).hexdigest()
    _edit_manifest(store, 1, lambda m: m["files"]["ids"].update(sha256=digest))
    with pytest.raises(SnapshotError, match="not a valid .npy"):
        store.read(1)


def test_delta_rows_override_and_extend_the_base():
    base = _arrays(["a", "b", "c"])
    delta = _arrays(["c", "d"], fill=100.0)
    merged = apply_delta(base, delta)
    assert merged.ids.tolist() == ["a", "b", "c", "d"]
    assert merged.input_vectors[2].tolist() == [100.0, 101.0, 102.0]
    assert merged.counts.tolist() == [0, 1, 0, 1]


def test_load_applies_the_chain_in_order(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"])
    _write(store, 2, ["b"], parent=1, fill=10.0)
    _write(store, 3, ["b", "c"], parent=2, fill=20.0)
    loaded = store.load(3)
    assert loaded.manifest.version == 3
    assert loaded.manifest.base_version == 1
    assert loaded.arrays.ids.tolist() == ["a", "b", "c"]
    assert loaded.arrays.input_vectors[1].tolist() == [20.0, 21.0, 22.0]


def _removing(arrays, removed):
    return dataclasses.replace(arrays, removed_ids=np.array(removed, dtype="U"))


def test_a_delta_that_removes_ids_round_trips_and_load_leaves_their_rows_out(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b", "c"])
    store.write(
        2, _removing(_arrays(["d"]), ["b", "ü-😀"]), offsets={}, newest_event_ts=None, parent_version=1
    )
    assert store.read(2).arrays.removed_ids.tolist() == ["b", "ü-😀"]
    loaded = store.load(2)
    assert (loaded.arrays.ids.tolist(), loaded.arrays.removed_ids) == (["a", "c", "d"], None)


def test_an_id_a_later_delta_writes_again_is_served_again(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a", "b"])
    store.write(2, _removing(_arrays([]), ["b"]), offsets={}, newest_event_ts=None, parent_version=1)
    _write(store, 3, ["b"], parent=2, fill=7.0)
    assert store.load(3).arrays.ids.tolist() == ["a", "b"]
    assert store.load(3).arrays.input_vectors[1].tolist() == [7.0, 8.0, 9.0]


def test_two_deltas_merged_remove_what_applying_both_in_turn_removes():
    base = _arrays(["a", "b", "c", "d"])
    first = _removing(_arrays(["e"], fill=5.0), ["a", "b"])
    second = _removing(_arrays(["b"], fill=9.0), ["c", "e"])
    merged = apply_delta(first, second)
    assert merged.removed_ids.tolist() == ["a", "c", "e"]
    in_turn = apply_delta(apply_delta(base, first), second)
    at_once = apply_delta(base, merged)
    assert in_turn.ids.tolist() == at_once.ids.tolist() == ["d", "b"]
    assert np.array_equal(in_turn.input_vectors, at_once.input_vectors)


def test_removed_ids_are_refused_on_a_full_snapshot_and_among_the_ids_written(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(SnapshotError, match="removed ids belong to a delta"):
        store.write(1, _removing(_arrays(["a"]), ["b"]), offsets={}, newest_event_ts=None)
    _write(store, 1, ["a", "b"])
    with pytest.raises(SnapshotError, match="also writes"):
        store.write(2, _removing(_arrays(["a"]), ["a"]), offsets={}, newest_event_ts=None, parent_version=1)
    with pytest.raises(SnapshotError, match="removed_ids: expected 1-d fixed-width unicode"):
        dataclasses.replace(_arrays(["a"]), removed_ids=np.array([1, 2]))


def test_a_full_snapshot_whose_manifest_lists_removed_ids_is_refused(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    path = tmp_path / "snaps" / folder_name(1) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["removed_ids"] = manifest["files"]["ids"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="removed_ids belong to a delta"):
        store.read(1)


def test_read_chain_after_a_served_version_returns_only_newer_deltas(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    _write(store, 2, ["b"], parent=1)
    _write(store, 3, ["c"], parent=2)
    assert [s.manifest.version for s in store.read_chain(3, after=2)] == [3]


def test_retention_keeps_the_newest_versions(tmp_path):
    store = _store(tmp_path, keep=2)
    for version in range(1, 5):
        _write(store, version, ["a"])
    assert store.versions() == [3, 4]


def test_retention_keeps_the_base_of_a_kept_delta(tmp_path):
    store = _store(tmp_path, keep=1)
    _write(store, 1, ["a"])
    _write(store, 2, ["a"], parent=1)
    _write(store, 3, ["a"], parent=2)
    assert store.versions() == [1, 2, 3]


def test_retention_never_deletes_the_version_latest_names(tmp_path):
    store = _store(tmp_path, keep=1)
    _write(store, 1, ["a"])
    (store.root / folder_name(5)).mkdir()  # a newer folder LATEST does not (yet) name
    assert store.prune() == []
    assert store.versions() == [1, 5]


def test_remove_stale_temp_clears_a_crashed_write(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    (store.root / ".tmp-v000000000002-dead").mkdir()
    store.remove_stale_temp()
    assert sorted(p.name for p in store.root.iterdir()) == [LATEST, folder_name(1)]


def test_a_write_that_crashes_midway_leaves_the_previous_snapshot_live(tmp_path, monkeypatch):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    import recsim_stream.snapshot as snapshot_module

    real = snapshot_module.write_npy

    def crash_on_vectors(folder, name, arr):
        if name == "output_vectors":
            raise OSError("disk full")
        return real(folder, name, arr)

    monkeypatch.setattr(snapshot_module, "write_npy", crash_on_vectors)
    with pytest.raises(OSError, match="disk full"):
        _write(store, 2, ["a", "b"])
    assert store.latest_version() == 1
    assert store.versions() == [1]
    assert store.load(1).arrays.ids.tolist() == ["a"]


def test_a_concurrent_reader_only_ever_sees_whole_snapshots(tmp_path):
    import threading

    store = _store(tmp_path, keep=1000)
    _write(store, 1, ["a"])
    done = threading.Event()
    errors, loaded = [], []

    def read_latest():
        reader = SnapshotStore(store.config)
        while not done.is_set():
            try:
                version = reader.latest_version()
                snapshot = reader.load(version)
                loaded.append((version, snapshot.arrays.count))
            except SnapshotError as exc:
                errors.append(exc)

    thread = threading.Thread(target=read_latest)
    thread.start()
    for version in range(2, 40):
        _write(store, version, [f"i{j}" for j in range(version)])
    done.set()
    thread.join()
    assert errors == []
    assert all(count == version for version, count in loaded)


def test_prepared_files_are_not_a_version_until_written(tmp_path):
    store = _store(tmp_path)
    store.prepare(_arrays(["a", "b"]))
    assert store.versions() == []


def test_a_write_of_prepared_files_publishes_those_arrays(tmp_path):
    store = _store(tmp_path)
    arrays = _arrays(["a", "b"])
    prepared = store.prepare(arrays)
    store.write(1, arrays, offsets={}, newest_event_ts=None, prepared=prepared)
    assert (store.latest_version(), store.read(1).arrays.ids.tolist()) == (1, ["a", "b"])


def test_discarded_prepared_files_leave_no_folder_behind(tmp_path):
    store = _store(tmp_path)
    store.discard(store.prepare(_arrays(["a"])))
    assert list((tmp_path / "snaps").iterdir()) == []


def test_prepared_files_cannot_be_published_as_a_delta(tmp_path):
    store = _store(tmp_path)
    _write(store, 1, ["a"])
    arrays = _arrays(["b"])
    with pytest.raises(SnapshotError, match="full snapshot"):
        store.write(
            2, arrays, offsets={}, newest_event_ts=None, parent_version=1, prepared=store.prepare(arrays)
        )


def test_prepared_files_a_write_refuses_leave_no_folder_behind(tmp_path):
    store = _store(tmp_path)
    _write(store, 2, ["a"])
    arrays = _arrays(["b"])
    with pytest.raises(SnapshotError, match="above the latest"):
        store.write(1, arrays, offsets={}, newest_event_ts=None, prepared=store.prepare(arrays))
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["LATEST", "v000000000002"]
