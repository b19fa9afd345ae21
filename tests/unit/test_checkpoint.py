"""Checkpoints: the state tree codec, atomic writes, verified reads, fallback, retention, and that
resuming a learner from its checkpoint equals continuing it."""

from __future__ import annotations

import json
import threading

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
from recsim_stream.config import CheckpointConfig, Config, LearnConfig, SimConfig
from recsim_stream.events import Event
from recsim_stream.learner import Learner
from recsim_stream.metrics import CheckpointMetrics, new_registry
from recsim_stream.shard import ParameterShard
from recsim_stream.sim import Simulator
from recsim_stream.trainer import local_shard_calls

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
