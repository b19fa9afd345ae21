"""Hand-off of a partition's open sessions on a rebalance: the store, the decision, and two updaters."""

from __future__ import annotations

import dataclasses

import msgpack

from recsim_stream.checkpoint import Checkpoint
from recsim_stream.config import CheckpointConfig, Config, LearnConfig
from recsim_stream.events import Event, EventKind, encode_event
from recsim_stream.handoff import Handoff, HandoffStore, Outcome, decide, decode, encode, session_keys
from recsim_stream.kafka_io import CommitRefused
from recsim_stream.learner import Learner
from recsim_stream.metrics import UpdaterMetrics, new_registry
from recsim_stream.shard import ParameterShard
from recsim_stream.trainer import local_shard_calls
from recsim_stream.updater import Updater

SESSIONS = {
    "version": 1,
    "partitions": [
        [
            3,
            1_700_000_060.0,
            2,
            [[1, "u1", None, 1_700_000_000.0, 1_700_000_060.0, 2, False, [11, -7], [11, -7], [], []]],
        ]
    ],
}
HANDOFF = Handoff(42, SESSIONS, {11: "i11", -7: "i7"})


def _store(tmp_path) -> HandoffStore:
    return HandoffStore(CheckpointConfig(dir=str(tmp_path)))


def test_a_written_handoff_reads_back_equal(tmp_path):
    store = _store(tmp_path)
    store.write(("events", 3), HANDOFF)
    assert store.read(("events", 3)) == HANDOFF


def test_a_partition_without_a_handoff_reads_none(tmp_path):
    assert _store(tmp_path).read(("events", 0)) is None


def test_the_newest_write_replaces_the_previous_one(tmp_path):
    store = _store(tmp_path)
    store.write(("events", 3), HANDOFF)
    store.write(("events", 3), dataclasses.replace(HANDOFF, offset=50))
    assert store.read(("events", 3)).offset == 50


def test_a_write_leaves_no_temporary_file(tmp_path):
    store = _store(tmp_path)
    store.write(("events", 3), HANDOFF)
    assert sorted(p.name for p in store.folder.iterdir()) == ["events-3.msgpack"]


def test_a_damaged_file_reads_as_none(tmp_path):
    store = _store(tmp_path)
    store.write(("events", 3), HANDOFF)
    store.path(("events", 3)).write_bytes(b"\xc1 not msgpack")
    assert store.read(("events", 3)) is None


def test_a_file_for_another_partition_is_refused():
    data = encode(("events", 2), HANDOFF)
    try:
        decode(data, ("events", 3), "test")
    except ValueError as exc:
        assert "expected partition ('events', 3)" in str(exc)
    else:
        raise AssertionError("expected a HandoffError")


def test_a_negative_offset_is_refused():
    body = msgpack.unpackb(encode(("events", 3), HANDOFF), raw=False, strict_map_key=True)
    body["offset"] = -1
    try:
        decode(msgpack.packb(body), ("events", 3), "test")
    except ValueError as exc:
        assert "non-negative offset" in str(exc)
    else:
        raise AssertionError("expected a HandoffError")


def test_a_topic_name_that_is_not_a_kafka_name_is_refused(tmp_path):
    try:
        _store(tmp_path).path(("../x", 0))
    except ValueError as exc:
        assert "Kafka topic name" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_a_handoff_at_the_resume_offset_is_exact():
    assert decide(HANDOFF, 42) == Outcome.EXACT


def test_a_handoff_at_another_offset_means_afresh():
    assert decide(HANDOFF, 40) == Outcome.AFRESH


def test_no_handoff_for_a_partition_read_before_means_afresh():
    assert decide(None, 40) == Outcome.AFRESH


def test_no_handoff_for_a_partition_never_read_is_new():
    assert decide(None, None) == Outcome.NEW


def test_a_handoff_with_nothing_committed_means_afresh():
    assert decide(HANDOFF, None) == Outcome.AFRESH


def test_session_keys_are_every_seen_item():
    assert session_keys(SESSIONS) == {11, -7}


# -- two updaters over shared shards -----------------------------------------------------------

LEARN = LearnConfig(dim=8, shards=2, batch_pairs=64)


@dataclasses.dataclass(frozen=True)
class _Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class _Source:
    """Polls the given records once; commits are remembered."""

    def __init__(self, records: list[_Record]) -> None:
        self.pending = records
        self.committed: dict = {}

    def poll(self) -> list[_Record]:
        batch, self.pending = self.pending, []
        return batch

    def commit(self, next_offsets) -> None:
        self.committed.update(next_offsets)

    def lag(self) -> dict:
        return {}

    def set_revoke_handler(self, handler) -> None:
        pass

    def start_from(self, next_offsets) -> None:
        pass


class _Shards:
    def __init__(self, shards: list[ParameterShard]) -> None:
        self.shards = shards
        self.pull, self.push = local_shard_calls(shards)

    def barrier(self) -> list[int]:
        return [s.version for s in self.shards]


class _NoDeadLetters:
    def send(self, record, bad) -> None:
        raise AssertionError(f"unexpected dead letter {bad}")

    def flush(self) -> None:
        pass


def _records() -> list[_Record]:
    """Two users on partitions 0 and 1, three clicks each a minute apart: their sessions stay open."""
    records = []
    for partition, user in ((0, "u0"), (1, "u1")):
        for n in range(3):
            event = Event(user, f"{user}-i{n}", EventKind.CLICK, 1_700_000_000.0 + 60.0 * n)
            records.append(_Record("events", partition, n, int(event.ts * 1000), None, encode_event(event)))
    return records


def _updater(tmp_path, shards: _Shards, records: list[_Record]) -> Updater:
    config = Config(learn=LEARN, checkpoint=CheckpointConfig(dir=str(tmp_path)))
    return Updater(
        config,
        _Source(records),
        _NoDeadLetters(),
        Learner(config, shards.pull, shards.push),
        shards,
        None,
        UpdaterMetrics(new_registry()),
        handoff=HandoffStore(config.checkpoint),
    )


def _shared() -> _Shards:
    return _Shards([ParameterShard(LEARN, i) for i in range(2)])


def test_revoked_sessions_are_adopted_by_the_next_owner_resuming_at_their_offset(tmp_path):
    shards = _shared()
    first = _updater(tmp_path, shards, _records())
    first.assign({("events", 0): None, ("events", 1): None})
    first.step()
    before = first.learner.windows.state()
    first.revoke({("events", 0), ("events", 1)})
    second = _updater(tmp_path, shards, [])
    second.assign({("events", 0): 3, ("events", 1): 3})
    assert second.learner.windows.state() == before


def test_the_next_owner_knows_the_item_ids_of_adopted_sessions(tmp_path):
    shards = _shared()
    first = _updater(tmp_path, shards, _records())
    first.assign({("events", 0): None})
    first.step()
    first.revoke({("events", 0), ("events", 1)})
    second = _updater(tmp_path, shards, [])
    second.assign({("events", 1): 3})
    assert sorted(second.learner.items.names.values()) == ["u1-i0", "u1-i1", "u1-i2"]


def test_clean_handoffs_are_counted_exact(tmp_path):
    shards = _shared()
    first = _updater(tmp_path, shards, _records())
    first.assign({("events", 0): None, ("events", 1): None})
    first.step()
    first.revoke({("events", 0), ("events", 1)})
    second = _updater(tmp_path, shards, [])
    second.assign({("events", 0): 3, ("events", 1): 3})
    assert second.handoffs == {Outcome.EXACT: 2, Outcome.AFRESH: 0, Outcome.NEW: 0}


def test_a_partition_resumed_elsewhere_than_its_handoff_starts_afresh(tmp_path):
    shards = _shared()
    first = _updater(tmp_path, shards, _records())
    first.assign({("events", 0): None, ("events", 1): None})
    first.step()
    first.revoke({("events", 0), ("events", 1)})
    second = _updater(tmp_path, shards, [])
    second.assign({("events", 0): 2})
    assert (second.handoffs[Outcome.AFRESH], second.learner.windows.open_sessions()) == (1, 0)


def test_a_failed_updater_hands_nothing_over(tmp_path):
    shards = _shared()
    first = _updater(tmp_path, shards, _records())
    first.assign({("events", 0): None, ("events", 1): None})
    first.step()
    first.failed = RuntimeError("a shard died mid-poll (test)")
    first.revoke({("events", 0), ("events", 1)})
    assert HandoffStore(first.config.checkpoint).read(("events", 0)) is None


def _refuse(next_offsets) -> None:
    raise CommitRefused(f"refused {next_offsets} (test)")


def test_the_revoke_commits_the_processed_offsets(tmp_path):
    shards = _shared()
    first = _updater(tmp_path, shards, _records())
    first.source.commit = _refuse  # the loop's commits were refused: the revoke's must carry them
    first.assign({("events", 0): None, ("events", 1): None})
    first.step()
    assert first.revoke({("events", 0), ("events", 1)}) == {("events", 0): 3, ("events", 1): 3}


# -- item ids shared between updaters ---------------------------------------------------------


class _Names:
    """A NameExchange in memory: what was shared, and what the others shared."""

    def __init__(self, others: list[str]) -> None:
        self.shared: list[list[str]] = []
        self.others = others

    def share(self, names: list[str]) -> None:
        self.shared.append(names)

    def fetch(self) -> list[str]:
        names, self.others = self.others, []
        return names


def test_an_updater_shares_each_new_item_id_once(tmp_path):
    updater = _updater(tmp_path, _shared(), _records())
    updater.names = names = _Names([])
    updater.assign({("events", 0): None, ("events", 1): None})
    updater.step()
    updater.step()
    assert names.shared == [["u0-i0", "u0-i1", "u0-i2", "u1-i0", "u1-i1", "u1-i2"]]


def test_the_publisher_learns_the_item_ids_others_shared(tmp_path):
    updater = _updater(tmp_path, _shared(), [])
    updater.names = _Names(["elsewhere"])
    updater.learn_names()
    assert updater.learner.items.known("elsewhere")


# -- an updater joining shards that are already running ---------------------------------------


def _publisher_checkpoint(tmp_path) -> Checkpoint:
    """A checkpoint of an updater that read every record (its sessions still open)."""
    publisher = _updater(tmp_path, _shared(), _records())
    publisher.assign({("events", 0): None, ("events", 1): None})
    publisher.step()
    return Checkpoint(
        1, dict(publisher.processed), {"learner": publisher.learner.state(), "cold_start": None}, 0.0
    )


def test_a_joining_updater_takes_the_item_ids_of_the_checkpoint(tmp_path):
    joining = _updater(tmp_path, _shared(), [])
    joining.join_running(_publisher_checkpoint(tmp_path))
    assert joining.learner.items.known("u1-i2")


def test_a_joining_updater_takes_no_sessions_from_the_checkpoint(tmp_path):
    joining = _updater(tmp_path, _shared(), [])
    joining.join_running(_publisher_checkpoint(tmp_path))
    assert joining.learner.windows.open_sessions() == 0
