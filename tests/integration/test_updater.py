"""The updater on a real broker and a real Ray cluster: learning, commit policy, dead letters, rebalances."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import ray
from kafka import KafkaAdminClient
from prometheus_client import CollectorRegistry

from recsim_stream.config import Config, KafkaConfig, LearnConfig, SimConfig, SnapshotConfig
from recsim_stream.dead_letter import decode_dead_letter
from recsim_stream.events import BadReason, Event, EventKind
from recsim_stream.kafka_io import (
    CommitRefused,
    ConsumerRecord,
    DeadLetterSink,
    EventConsumer,
    RecordProducer,
    RevokeHandler,
)
from recsim_stream.learner import Learner
from recsim_stream.metrics import SnapshotMetrics, UpdaterMetrics, new_registry
from recsim_stream.ray_actors import RayShards
from recsim_stream.sim import Simulator
from recsim_stream.snapshot import SnapshotStore
from recsim_stream.snapshotter import Snapshotter
from recsim_stream.updater import Updater

pytestmark = pytest.mark.integration

START_TS = 1_700_000_000.0
LEARN = LearnConfig(dim=32, shards=2, batch_pairs=4096)

Key = tuple[int, int]  # (partition, offset) of one record


class Recording:
    """The real consumer, passed through, remembering every poll (and what each revoke committed)."""

    def __init__(self, consumer: EventConsumer) -> None:
        self.consumer = consumer
        self.polls: list[list[ConsumerRecord]] = []
        self.revoke_commits: list[dict[tuple[str, int], int]] = []

    def poll(self) -> list[ConsumerRecord]:
        records = self.consumer.poll()
        self.polls.append(records)
        return records

    def commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        self.consumer.commit(next_offsets)

    def lag(self) -> dict[tuple[str, int], int]:
        return self.consumer.lag()

    def set_revoke_handler(self, handler: RevokeHandler) -> None:
        def recorded(partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
            offsets = dict(handler(partitions))
            self.revoke_commits.append(offsets)
            return offsets

        self.consumer.set_revoke_handler(recorded)

    def keys(self) -> list[Key]:
        return [(r.partition, r.offset) for poll in self.polls for r in poll]


class RefusingCommits(Recording):
    """Refuses every commit of the loop, as a group does while it rebalances, so only the revoke
    callback can commit: what it commits is all the next owner resumes from."""

    def commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        raise CommitRefused(f"refused {next_offsets} (test)")


@dataclass
class Rig:
    updater: Updater
    source: Recording
    consumer: EventConsumer
    producer: RecordProducer
    snapshotter: Snapshotter
    store: SnapshotStore
    registry: CollectorRegistry

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()


@pytest.fixture
def shards(ray_cluster: None) -> Iterator[RayShards]:
    shards = RayShards(LEARN)
    yield shards
    shards.kill()


def make_config(kafka: KafkaConfig, tmp_path: Path, max_poll_records: int = 20000) -> Config:
    return Config(
        kafka=replace(kafka, max_poll_records=max_poll_records),
        learn=LEARN,
        snapshot=SnapshotConfig(dir=str(tmp_path / "snapshots"), interval_s=3600.0),
    )


def make_rig(config: Config, shards: RayShards, source_type: type[Recording] = Recording) -> Rig:
    registry = new_registry()
    consumer = EventConsumer(config.kafka)
    source = source_type(consumer)
    producer = RecordProducer(config.kafka)
    store = SnapshotStore(config.snapshot)
    snapshotter = Snapshotter(config.snapshot, store, SnapshotMetrics(registry), config.learn.shards)
    learner = Learner(config, shards.pull, shards.push)
    updater = Updater(
        config, source, DeadLetterSink(producer), learner, shards, snapshotter, UpdaterMetrics(registry)
    )
    return Rig(updater, source, consumer, producer, snapshotter, store, registry)


def publish(config: KafkaConfig, events: Sequence[Event]) -> None:
    producer = RecordProducer(config)
    for event in events:
        producer.send_event(event)
    producer.flush()
    producer.close()


def user_events(users: int, per_user: int, first_minute: int = 0) -> list[Event]:
    """Each user clicks ``per_user`` items of a 50-item catalogue, one a minute (never late)."""
    return [
        Event(f"u{u}", f"i{(u * 7 + n) % 50}", EventKind.CLICK, START_TS + 60.0 * n)
        for n in range(first_minute, first_minute + per_user)
        for u in range(users)
    ]


def end_offsets(keys: Sequence[Key], topic: str) -> dict[tuple[str, int], int]:
    """The next offset after the last record read, per partition."""
    ends: dict[tuple[str, int], int] = {}
    for partition, offset in keys:
        ends[(topic, partition)] = max(offset + 1, ends.get((topic, partition), 0))
    return ends


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"expected {what} within {timeout_s} s"
        time.sleep(0.05)


def step_until(updater: Updater, records: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while updater.totals.records < records:
        assert time.monotonic() < deadline, (
            f"expected {records} records in {timeout_s} s, got {updater.totals.records}"
        )
        updater.step()


def read_rest(config: KafkaConfig, count: int, timeout_s: float = 60.0) -> list[Key]:
    """What a new member of the group reads: ``count`` records, then (checked) nothing more."""
    consumer = EventConsumer(config)
    keys: list[Key] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(keys) < count:
            assert time.monotonic() < deadline, f"expected {count} records in {timeout_s} s, got {len(keys)}"
            keys.extend((r.partition, r.offset) for r in consumer.poll(timeout_ms=500))
        keys.extend((r.partition, r.offset) for r in consumer.poll(timeout_ms=1000))
    finally:
        consumer.close()
    return keys


def committed_offsets(config: KafkaConfig) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap)
    try:
        offsets = admin.list_group_offsets({config.group_id: None})[config.group_id]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == config.events_topic}


def first_offsets(keys: Sequence[Key]) -> dict[int, int]:
    first: dict[int, int] = {}
    for partition, offset in keys:
        first[partition] = min(offset, first.get(partition, offset))
    return first


def contiguous_from_zero(keys: Sequence[Key]) -> bool:
    """Every partition's offsets are 0, 1, 2, ... each once."""
    per_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset in keys:
        per_partition[partition].append(offset)
    return all(sorted(offsets) == list(range(len(offsets))) for offsets in per_partition.values())


def test_updater_learns_the_planted_clusters(
    kafka_config: KafkaConfig, shards: RayShards, tmp_path: Path
) -> None:
    sim_config = SimConfig(
        seed=3, events=30_000, rate=0, items=300, clusters=10, users=500,
        new_items_per_1k_events=0, drift_per_1k_events=0,
    )  # fmt: skip
    sim = Simulator(sim_config, START_TS)
    events = [e for e in sim.stream() if isinstance(e, Event)]
    publish(kafka_config, events)
    rig = make_rig(make_config(kafka_config, tmp_path), shards)
    try:
        step_until(rig.updater, len(events))
        rig.updater.snapshot()
        rig.snapshotter.wait()
    finally:
        rig.close()
    snapshot = rig.store.load(rig.store.latest_version())
    vectors = snapshot.arrays.input_vectors / np.linalg.norm(
        snapshot.arrays.input_vectors, axis=1, keepdims=True
    )
    cosine = vectors @ vectors.T
    np.fill_diagonal(cosine, -np.inf)
    neighbours = np.argsort(-cosine, axis=1)[:, :10]
    cluster = np.array([sim.truth.cluster_of[i] for i in snapshot.arrays.ids.tolist()])
    same_cluster_share = (cluster[neighbours] == cluster[:, None]).mean(axis=1)
    # Chance is 1/10: a share of 0.6 is far above it; "most items" = at least 90% of them.
    assert (same_cluster_share >= 0.6).mean() >= 0.9


def test_consumer_lag_is_zero_per_partition_once_everything_is_consumed(
    kafka_config: KafkaConfig, shards: RayShards, tmp_path: Path
) -> None:
    publish(kafka_config, user_events(users=40, per_user=10))
    rig = make_rig(make_config(kafka_config, tmp_path), shards)
    try:
        step_until(rig.updater, 400)
        lags = {
            p: rig.registry.get_sample_value("recsim_consumer_lag_records", {"partition": str(p)})
            for p in range(4)
        }
    finally:
        rig.close()  # a revoke (and so a close) removes the lag of the partitions given up
    assert lags == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}


def test_a_restarted_member_resumes_exactly_after_the_last_processed_record(
    kafka_config: KafkaConfig, shards: RayShards, tmp_path: Path
) -> None:
    publish(kafka_config, user_events(users=60, per_user=50))  # 3000 records
    rig = make_rig(make_config(kafka_config, tmp_path, max_poll_records=250), shards)
    try:
        step_until(rig.updater, 1000)
    finally:
        rig.close()
    processed = rig.source.keys()
    rest = read_rest(kafka_config, 3000 - len(processed))
    assert len(processed) == rig.updater.totals.records
    assert first_offsets(rest) == {p: committed_offsets(kafka_config).get(p, 0) for p in first_offsets(rest)}
    assert contiguous_from_zero(processed + rest) and len(processed) + len(rest) == 3000


def test_the_records_of_a_poll_whose_training_failed_are_not_committed(
    kafka_config: KafkaConfig, shards: RayShards, tmp_path: Path
) -> None:
    publish(kafka_config, user_events(users=60, per_user=50))
    rig = make_rig(make_config(kafka_config, tmp_path, max_poll_records=250), shards)
    try:
        step_until(rig.updater, 1000)
        ray.kill(shards.actors[0])
        with pytest.raises(ray.exceptions.RayActorError):
            while True:  # the first poll with records trains, and fails
                rig.updater.step()
    finally:
        rig.close()  # the revoke on close must not commit the failed poll either
    failed_poll = {(r.partition, r.offset) for r in rig.source.polls[-1]}
    rest = read_rest(kafka_config, 3000 - rig.updater.totals.records)
    assert len(failed_poll) > 0
    assert failed_poll <= set(rest)
    assert contiguous_from_zero(rig.source.keys()[: rig.updater.totals.records] + rest)


def test_bad_records_are_dead_lettered_with_their_reason_and_the_loop_goes_on(
    kafka_config: KafkaConfig, shards: RayShards, tmp_path: Path
) -> None:
    producer = RecordProducer(kafka_config)
    producer.send_event(Event("u1", "i1", EventKind.CLICK, START_TS + 1000.0))
    producer.send_raw(kafka_config.events_topic, b"u1", b"\xc1 not msgpack")
    producer.send_event(Event("u1", "i2", EventKind.CLICK, START_TS + 1100.0))
    producer.send_event(Event("u1", "i3", EventKind.CLICK, START_TS))  # 1100 s behind: late
    producer.send_event(Event("u1", "i4", EventKind.CLICK, START_TS + 1200.0))
    producer.flush()
    producer.close()
    rig = make_rig(make_config(kafka_config, tmp_path), shards)
    try:
        step_until(rig.updater, 5)
    finally:
        rig.close()
    dlq = EventConsumer(
        replace(kafka_config, group_id=kafka_config.group_id + "-dlq"), topic=kafka_config.dlq_topic
    )
    try:
        letters = []
        wait_for(lambda: letters.extend(dlq.poll(timeout_ms=500)) or len(letters) >= 2, 30, "2 dead letters")
    finally:
        dlq.close()
    decoded = [decode_dead_letter(r.value) for r in letters]
    assert [(d.reason, d.offset) for d in decoded] == [(BadReason.NOT_MSGPACK, 1), (BadReason.LATE, 3)]
    assert (rig.updater.totals.events, rig.updater.totals.dead_lettered) == (3, 2)
    assert sum(committed_offsets(kafka_config).values()) == 5


def test_a_joining_member_resumes_where_the_first_committed_on_revoke(
    kafka_config: KafkaConfig, shards: RayShards, tmp_path: Path
) -> None:
    publish(kafka_config, user_events(users=80, per_user=50))  # 4000 records
    config = make_config(kafka_config, tmp_path, max_poll_records=500)
    first = make_rig(config, shards, RefusingCommits)  # only its revoke callback can commit
    second_snapshots = replace(config.snapshot, dir=str(tmp_path / "second"))
    second = make_rig(replace(config, snapshot=second_snapshots), shards)
    try:
        step_until(first.updater, 4000)
        # The second joins; both poll, in turns on this thread, until the first has given partitions up.
        deadline = time.monotonic() + 60
        while not (first.consumer.revocations and second.consumer.assignment()):
            assert time.monotonic() < deadline, "expected a rebalance within 60 s"
            second.updater.step()
            first.updater.step()
        committed_on_revoke = [c for c in first.source.revoke_commits if c]
        publish(kafka_config, user_events(users=80, per_user=50, first_minute=50))  # 4000 more
        deadline = time.monotonic() + 60
        while first.updater.totals.records + second.updater.totals.records < 8000:
            assert time.monotonic() < deadline, "expected 8000 records between the two members within 60 s"
            first.updater.step()
            second.updater.step()
    finally:
        first.close()
        second.close()
    assert committed_on_revoke == [end_offsets(first.source.keys()[:4000], kafka_config.events_topic)]
    assert first.updater.totals.records + second.updater.totals.records == 8000
    assert len(second.source.keys()) > 0
    assert contiguous_from_zero(first.source.keys() + second.source.keys())
    assert sum(committed_offsets(kafka_config).values()) == 8000
