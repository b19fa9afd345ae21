"""Checkpoints: the state tree codec, atomic writes, verified reads, fallback, retention, and that
resuming a learner from its checkpoint equals continuing it."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import zlib

import numpy as np
import pytest

from recsim_stream.checkpoint import (
    MANIFEST,
    STATE_FILE,
    CheckpointError,
    CheckpointStore,
    folder_name,
    pack_state,
    unpack_state,
)
from recsim_stream.checkpointer import Checkpointer
from recsim_stream.config import CheckpointConfig, Config, LearnConfig, SimConfig, SnapshotConfig
from recsim_stream.events import Event, encode_event
from recsim_stream.learner import Learner
from recsim_stream.metrics import CheckpointMetrics, SnapshotMetrics, UpdaterMetrics, new_registry
from recsim_stream.shard import ParameterShard
from recsim_stream.sim import Simulator
from recsim_stream.snapshot import SnapshotStore
from recsim_stream.snapshotter import Snapshotter
from recsim_stream.trainer import local_shard_calls
from recsim_stream.updater import Updater

OFFSETS = {("events", 0): 10, ("events", 1): 7}


def _store(tmp_path, keep: int = 3) -> CheckpointStore:
    return CheckpointStore(CheckpointConfig(dir=str(tmp_path / "ckpt"), keep=keep))


def _state(marker: int = 1) -> dict:
    return {"n": marker, "table": np.arange(6, dtype=np.float32).reshape(2, 3) * marker, "names": ["a", "é"]}


def test_the_state_tree_round_trips_with_arrays_by_reference():
    state = {"a": [1, 2.5, None, True, "x"], "b": {3: np.array([1, 2], np.int64)}, "c": (np.float64(2.0),)}
    data, arrays = pack_state(state)
    assert list(arrays) == ["a0"]
    back = unpack_state(data, arrays, "here")
    assert back["a"] == [1, 2.5, None, True, "x"]
    assert back["b"][3].tolist() == [1, 2]
    assert back["c"] == [2.0]


def test_a_zero_dimensional_array_keeps_its_shape_through_the_store(tmp_path):
    store = _store(tmp_path)
    store.write(OFFSETS, {"steps": np.asarray(7, np.int64)})
    assert store.read(1).state["steps"].shape == ()


def test_an_unknown_type_in_the_state_is_refused_when_packing():
    with pytest.raises(TypeError, match="cannot store a set"):
        pack_state({"s": {1, 2}})


def test_malformed_state_bytes_raise_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="here: malformed state"):
        unpack_state(b"\xc1\xff", {}, "here")


def test_a_state_naming_an_array_the_manifest_lacks_is_refused():
    data, _arrays = pack_state({"t": np.zeros(2)})
    with pytest.raises(CheckpointError, match="refers to an array 'a0'"):
        unpack_state(data, {}, "here")


def test_write_then_read_returns_offsets_and_state(tmp_path):
    store = _store(tmp_path)
    seq = store.write(OFFSETS, _state())
    checkpoint = store.read(seq)
    assert seq == 1
    assert checkpoint.offsets == OFFSETS
    assert checkpoint.state["n"] == 1
    assert checkpoint.state["table"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert checkpoint.state["names"] == ["a", "é"]


def test_only_the_newest_keep_checkpoints_remain(tmp_path):
    store = _store(tmp_path, keep=2)
    for marker in range(1, 5):
        store.write(OFFSETS, _state(marker))
    assert store.seqs() == [3, 4]
    assert store.newest().state["n"] == 4


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    store = _store(tmp_path)
    store.write(OFFSETS, _state(1))
    store.write({("events", 0): 99}, _state(2))
    array_file = store.root / folder_name(2) / "a0.npy"
    array_file.write_bytes(array_file.read_bytes()[:-4])  # truncated
    newest = store.newest()
    assert newest.seq == 1
    assert newest.offsets == OFFSETS


def test_a_checkpoint_with_a_damaged_state_file_or_manifest_is_refused(tmp_path):
    store = _store(tmp_path)
    store.write(OFFSETS, _state())
    folder = store.root / folder_name(1)
    (folder / STATE_FILE).write_bytes(b"\x00" + (folder / STATE_FILE).read_bytes()[1:])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        store.read(1)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable manifest"):
        store.read(1)
    assert store.newest() is None


def test_a_manifest_with_a_negative_offset_is_refused(tmp_path):
    store = _store(tmp_path)
    store.write(OFFSETS, _state())
    path = store.root / folder_name(1) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["offsets"]["events"]["0"] = -5
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="negative offset"):
        store.read(1)


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_and_no_temp_folder(tmp_path, monkeypatch):
    store = _store(tmp_path)
    store.write(OFFSETS, _state(1))
    import recsim_stream.checkpoint as checkpoint_module

    def disk_full(folder, name, arr):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "write_npy", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write(OFFSETS, _state(2))
    assert store.seqs() == [1]
    assert [p.name for p in store.root.iterdir()] == [folder_name(1)]
    assert store.newest().state["n"] == 1


def test_accept_can_refuse_a_checkpoint_for_an_older_one(tmp_path):
    store = _store(tmp_path)
    store.write(OFFSETS, _state(1))
    store.write(OFFSETS, _state(2))

    def only_odd(checkpoint):
        if checkpoint.state["n"] % 2 == 0:
            raise CheckpointError("even")

    assert store.newest(accept=only_odd).state["n"] == 1


def test_stale_temporary_folders_are_removed(tmp_path):
    store = _store(tmp_path)
    store.write(OFFSETS, _state())
    (store.root / ".tmp-c000000000002-abcd").mkdir()
    store.remove_stale_temp()
    assert [p.name for p in store.root.iterdir()] == [folder_name(1)]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_checkpoint_is_due_by_interval_or_event_count_and_only_with_new_records(tmp_path):
    clock = _Clock()
    config = CheckpointConfig(dir=str(tmp_path / "c"), interval_s=10, every_events=100)
    checkpointer = Checkpointer(config, CheckpointStore(config), CheckpointMetrics(new_registry()), clock)
    assert not checkpointer.due(0)  # nothing new
    assert not checkpointer.due(50)
    assert checkpointer.due(100)  # by count
    clock.now = 11
    assert checkpointer.due(1)  # by time
    checkpointer.take(OFFSETS, _state(), records=1)
    checkpointer.wait()
    assert not checkpointer.due(1)
    assert checkpointer.written == 1


def test_a_failed_background_write_is_counted_and_the_next_one_can_succeed(tmp_path):
    config = CheckpointConfig(dir=str(tmp_path / "c"))
    (tmp_path / "c").write_text("a file where the folder should be")
    checkpointer = Checkpointer(config, CheckpointStore(config), CheckpointMetrics(new_registry()))
    checkpointer.take(OFFSETS, _state(), records=5)
    checkpointer.wait()
    assert (checkpointer.failed, checkpointer.written) == (1, 0)
    (tmp_path / "c").unlink()
    checkpointer.take(OFFSETS, _state(), records=6)
    checkpointer.wait()
    assert (checkpointer.failed, checkpointer.written) == (1, 1)


def test_take_does_not_block_the_caller_while_writing(tmp_path, monkeypatch):
    config = CheckpointConfig(dir=str(tmp_path / "c"))
    store = CheckpointStore(config)
    release = threading.Event()
    real = store.write

    def slow_write(offsets, state):
        release.wait(5)
        return real(offsets, state)

    monkeypatch.setattr(store, "write", slow_write)
    checkpointer = Checkpointer(config, store, CheckpointMetrics(new_registry()))
    checkpointer.take(OFFSETS, _state(), records=1)
    assert not checkpointer.due(2)  # a write is in flight
    release.set()
    checkpointer.wait()
    assert store.seqs() == [1]


# -- resuming equals continuing ------------------------------------------------------------------

LEARN = LearnConfig(dim=8, shards=2, batch_pairs=256)
CONFIG = Config(learn=LEARN)


def _events() -> list[Event]:
    sim = SimConfig(seed=5, events=3000, items=120, clusters=6, users=60)
    return [r for r in Simulator(sim, 1_700_000_000.0).stream() if isinstance(r, Event)]


def _learner(shards: list[ParameterShard]) -> Learner:
    pull, push = local_shard_calls(shards)
    return Learner(CONFIG, pull, push)


def _feed(learner: Learner, events: list[Event]) -> None:
    for event in events:
        learner.add(event, partition=hash(event.user_id) % 2)
        if learner.ready():
            learner.train()
    learner.train()
    learner.windows.advance()


def test_a_learner_restored_from_its_checkpoint_continues_exactly_like_the_original(tmp_path):
    events = _events()
    first, rest = events[:1500], events[1500:]
    shards = [ParameterShard(LEARN, i) for i in range(2)]
    original = _learner(shards)
    _feed(original, first)
    store = _store(tmp_path)
    store.write(OFFSETS, {"learner": original.state(), "shards": [s.state() for s in shards]})
    _feed(original, rest)

    checkpoint = store.newest()
    restored_shards = [ParameterShard(LEARN, i) for i in range(2)]
    for shard, state in zip(restored_shards, checkpoint.state["shards"], strict=True):
        shard.restore(state)
    restored = _learner(restored_shards)
    restored.restore(checkpoint.state["learner"])
    _feed(restored, rest)

    for a, b in zip(shards, restored_shards, strict=True):
        assert a.export().keys.tolist() == b.export().keys.tolist()
        np.testing.assert_array_equal(a.export().input, b.export().input)
        np.testing.assert_array_equal(a.export().output, b.export().output)
    assert restored.state()["windows"] == original.state()["windows"]
    assert restored.pairs_trained == original.pairs_trained
    assert restored.items.names == original.items.names


def test_a_learner_state_with_pending_pairs_is_refused():
    learner = _learner([ParameterShard(LEARN, i) for i in range(2)])
    for event in _events()[:50]:
        learner.add(event)
    with pytest.raises(ValueError, match="pairs pending"):
        learner.state()


# -- a restart with another shard count re-routes the checkpoint's rows ---------------------------


@dataclasses.dataclass(frozen=True)
class _Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def _records(events: list[Event]) -> list[_Record]:
    """The events as records of a two-partition topic, partitioned by user as the producer does."""
    next_offset = [0, 0]
    records = []
    for event in events:
        partition = zlib.crc32(event.user_id.encode()) % 2
        records.append(
            _Record(
                "events", partition, next_offset[partition], int(event.ts * 1000), None, encode_event(event)
            )
        )
        next_offset[partition] += 1
    return records


class _ListSource:
    """The updater's source over records in memory, ``per_poll`` at a time from ``start_from``'s offsets."""

    def __init__(self, records: list[_Record], per_poll: int = 500) -> None:
        self.records, self.per_poll, self.pending = records, per_poll, list(records)

    def start_from(self, next_offsets) -> None:
        self.pending = [r for r in self.records if r.offset >= next_offsets.get((r.topic, r.partition), 0)]

    def poll(self) -> list[_Record]:
        batch, self.pending = self.pending[: self.per_poll], self.pending[self.per_poll :]
        return batch

    def commit(self, next_offsets) -> None:
        pass

    def lag(self) -> dict:
        return {}

    def set_revoke_handler(self, handler) -> None:
        pass


class _NoDeadLetters:
    def send(self, record, bad) -> None:
        raise AssertionError(f"unexpected dead letter {bad} for {record}")

    def flush(self) -> None:
        pass


class _LocalShards:
    """The updater's shards in this process (what ``RayShards`` does, without Ray)."""

    def __init__(self, learn: LearnConfig) -> None:
        self.shards = [ParameterShard(learn, i) for i in range(learn.shards)]
        self.pull, self.push = local_shard_calls(self.shards)

    def export(self, since):
        return [s.export(v) for s, v in zip(self.shards, since, strict=True)]

    def barrier(self) -> list[int]:
        return [s.version for s in self.shards]

    def state(self) -> list[dict]:
        return [s.state() for s in self.shards]

    def restore(self, states) -> None:
        if len(states) != len(self.shards):
            raise ValueError(f"shard states: {len(states)} saved, {len(self.shards)} shards configured")
        for shard, state in zip(self.shards, states, strict=True):
            shard.restore(state)

    def rows(self) -> tuple[list[int], np.ndarray, np.ndarray, list[int]]:
        """(keys, inputs, outputs, counts) of every live row, ordered by key."""
        exports = [s.export() for s in self.shards]
        keys = np.concatenate([e.keys for e in exports])
        order = np.argsort(keys)
        return (
            keys[order].tolist(),
            np.concatenate([e.input for e in exports])[order],
            np.concatenate([e.output for e in exports])[order],
            np.concatenate([e.counts for e in exports])[order].tolist(),
        )


def _updater(
    config: Config, records: list[_Record], snapshotter: Snapshotter | None = None
) -> tuple[Updater, _LocalShards]:
    shards = _LocalShards(config.learn)
    learner = Learner(config, shards.pull, shards.push)
    metrics = UpdaterMetrics(new_registry())
    return Updater(
        config, _ListSource(records), _NoDeadLetters(), learner, shards, snapshotter, metrics
    ), shards


def _snapshotter(tmp_path, shards: int) -> Snapshotter:
    config = SnapshotConfig(dir=str(tmp_path / "snapshots"), interval_s=3600.0)
    store = SnapshotStore(config)
    return Snapshotter(config, store, SnapshotMetrics(new_registry()), shards)


def _drain(updater: Updater) -> None:
    while updater.step():
        pass


def _checkpointed_halfway(
    tmp_path, records: list[_Record], snapshotter: Snapshotter | None = None
) -> tuple[Updater, _LocalShards, CheckpointStore]:
    """A two-shard updater that read half the records and checkpointed there."""
    updater, shards = _updater(CONFIG, records, snapshotter)
    updater.resume(None)
    while updater.totals.records < len(records) // 2:
        updater.step()
    store = _store(tmp_path)
    store.write(updater.processed, updater.checkpoint_state())
    return updater, shards, store


def test_an_updater_resumed_with_another_shard_count_continues_like_the_original(tmp_path):
    records = _records(_events())
    original, original_shards, store = _checkpointed_halfway(tmp_path, records)
    _drain(original)
    resumed, resumed_shards = _updater(
        dataclasses.replace(CONFIG, learn=dataclasses.replace(LEARN, shards=3)), records
    )
    resumed.resume(store.newest(accept=resumed.check_compatible))
    _drain(resumed)

    assert resumed.totals.records == 3000
    keys, inputs, outputs, counts = resumed_shards.rows()
    want_keys, want_inputs, want_outputs, want_counts = original_shards.rows()
    assert keys == want_keys
    assert counts == want_counts
    np.testing.assert_array_equal(inputs, want_inputs)
    np.testing.assert_array_equal(outputs, want_outputs)


def test_resuming_with_another_shard_count_logs_the_rerouting(tmp_path, caplog):
    records = _records(_events())
    _original, original_shards, store = _checkpointed_halfway(tmp_path, records)
    rows = len(original_shards.rows()[0])
    resumed, _shards = _updater(
        dataclasses.replace(CONFIG, learn=dataclasses.replace(LEARN, shards=3)), records
    )
    with caplog.at_level(logging.INFO, logger="recsim_stream.reshard"):
        resumed.resume(store.newest())
    assert caplog.messages == [
        f"re-routed {rows} rows from 2 shards to 3 (learn.shards changed since the checkpoint)"
    ]


def test_a_checkpoint_of_another_dim_is_still_refused(tmp_path):
    records = _records(_events())
    _original, _shards, store = _checkpointed_halfway(tmp_path, records)
    resumed, _resumed_shards = _updater(
        dataclasses.replace(CONFIG, learn=dataclasses.replace(LEARN, dim=16)), records
    )
    with pytest.raises(ValueError, match="holds rows of dim 8; this updater is configured for dim 16"):
        resumed.check_compatible(store.newest())


def test_the_first_snapshot_after_resuming_with_another_shard_count_is_a_full_one(tmp_path):
    records = _records(_events())
    before = _snapshotter(tmp_path, shards=2)
    original, _shards, store = _checkpointed_halfway(tmp_path, records, before)
    original.snapshot()  # on top of the full one its first step published: a delta
    before.wait()
    published = before.store.versions()
    after = _snapshotter(tmp_path, shards=3)
    resumed, resumed_shards = _updater(
        dataclasses.replace(CONFIG, learn=dataclasses.replace(LEARN, shards=3)), records, after
    )
    resumed.resume(store.newest())
    resumed.step()  # a snapshot is due at once
    after.wait()

    assert before.store.read_manifest(published[-1]).kind == "delta"
    first = after.store.read_manifest(after.store.versions()[len(published)])
    assert (first.kind, first.parent_version) == ("full", None)
    assert first.count == sum(c > 0 for c in resumed_shards.rows()[3])


def test_a_partition_given_away_no_longer_holds_snapshots_back(tmp_path):
    records = _records(_events())
    _original, _shards, store = _checkpointed_halfway(tmp_path, records)
    resumed, _resumed_shards = _updater(CONFIG, records)
    resumed.resume(store.newest(), published={"events": {"0": 10**9, "1": 10**9}})
    assert resumed._holding_snapshots()

    resumed.revoke({("events", 0), ("events", 1)})

    assert not resumed._holding_snapshots()
