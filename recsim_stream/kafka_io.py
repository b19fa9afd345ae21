"""Kafka adapters (kafka-python): topic set-up, the record producer, the event consumer, dead letters.

The only module that imports ``kafka``; everything else sees bytes, ``Event`` and plain tuples.
Events are keyed by user id, so one user's events land in one partition, in order; items are keyed by
item id on a compacted topic, so the newest metadata of each item is kept.

Measured against a private local broker (``deploy/kafka``) on the shared 2-core machine, 200k encoded
events on 4 partitions, median of 3 (``scripts/bench_kafka_clients.py``, figures in BENCHMARKS.md):
the producer is bound by kafka-python's per-record Python work (send, accumulator, record futures),
not by the broker; it reaches ~43k records/s with the native ``crc32c`` package and ~23k without it
(kafka-python then checksums every batch in pure Python). Raw polling reaches ~145k records/s with
native CRC and ~45k without; librdkafka (confluent-kafka) produced 4-8x faster in the same runs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from kafka import (
    AsyncConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
)
from kafka.partitioner.default import murmur2
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from recsim_stream.config import KafkaConfig
from recsim_stream.dead_letter import encode_dead_letter, make_dead_letter
from recsim_stream.events import BadEvent, BadReason, Event, ItemMeta, encode_event, encode_item

__all__ = [
    "CommitRefused",
    "ConsumerRecord",
    "DeadLetterSink",
    "EventConsumer",
    "ItemsReader",
    "KafkaIOError",
    "RecordProducer",
]

log = logging.getLogger(__name__)

# One partition is plenty for refused records; they are rare and read by people, not by the updater.
DLQ_PARTITIONS = 1


class KafkaIOError(RuntimeError):
    """Kafka refused or lost something; the message names the topic and what was expected."""


def _topic_specs(config: KafkaConfig) -> dict[str, dict]:
    return {
        config.events_topic: {"num_partitions": config.partitions, "replication_factor": 1},
        config.items_topic: {
            "num_partitions": config.partitions,
            "replication_factor": 1,
            "configs": {"cleanup.policy": "compact"},
        },
        config.dlq_topic: {"num_partitions": DLQ_PARTITIONS, "replication_factor": 1},
    }


def ensure_topics(config: KafkaConfig, timeout_s: float = 30.0) -> None:
    """Create the events, items (compacted) and dead-letter topics unless they exist; wait until
    every partition has a leader. Existing topics are left as they are (partition count included)."""
    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap, client_id="recsim-admin")
    try:
        specs = _topic_specs(config)
        response = admin.create_topics(specs, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        for topic in response["topics"]:
            code = topic["error_code"]
            if code not in (0, TopicAlreadyExistsError.errno):
                raise KafkaIOError(
                    f"creating topic {topic['name']!r} on {config.bootstrap}: expected success or "
                    f"'already exists', got error {code} ({topic.get('error_message')})"
                )
        admin.wait_for_topics(list(specs), timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()


def key_partition(key: bytes, partitions: int) -> int:
    """The partition kafka-python's DefaultPartitioner (and the Java client's) gives ``key`` among
    ``partitions`` numbered 0..partitions-1: positive murmur2 of the key bytes, modulo the count."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class _KeyPartitions:
    """Per-topic cache of key -> partition, so murmur2 (pure Python, ~5 us) runs once per key.

    Bounded: cleared when it holds ``max_keys`` keys (a dict of a million short keys is ~100 MB)."""

    def __init__(self, partitions: int, max_keys: int = 1 << 20) -> None:
        self.partitions = partitions
        self._max_keys = max_keys
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        partition = self._cache.get(key)
        if partition is None:
            if len(self._cache) >= self._max_keys:
                self._cache.clear()
            partition = self._cache[key] = key_partition(key, self.partitions)
        return partition


# Record futures a topic accumulates before the finished ones are dropped (their failures counted).
_COLLECT_EVERY = 16384


class _TopicState:
    """What the producer keeps per topic: the key partitioner and the unfinished record futures."""

    def __init__(self, partitions: int) -> None:
        self.partitioner = _KeyPartitions(partitions)
        self.pending: list[FutureRecordMetadata] = []
        self.collect_at = _COLLECT_EVERY


class RecordProducer:
    """Sends events keyed by user id and item metadata keyed by item id; counts what it queued and
    what the broker refused. ``flush`` raises if any record since the last flush was lost.

    Built for kafka-python's per-record cost, which bounds the simulator and replay here: the
    partition of each key is computed once (murmur2, as the default and Java partitioners do, so keys
    land where other clients put them) and passed explicitly; failures are read from the record
    futures in bulk rather than through a callback per record. Idempotence (the client default) keeps
    one partition's records in order across retries with up to 5 requests in flight.
    """

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._producer = KafkaProducer(
            bootstrap_servers=config.bootstrap,
            client_id="recsim-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=config.producer_linger_ms,
            batch_size=config.producer_batch_bytes,
            # Its own metrics cost CPU per record; ours live in metrics.py.
            metrics_enabled=False,
        )
        self.sent: Counter[str] = Counter()  # records queued, per topic
        self.failed: Counter[str] = Counter()  # records the broker refused or that timed out, per topic
        self._last_error: Exception | None = None
        self._topics: dict[str, _TopicState] = {}

    def send_event(self, event: Event) -> None:
        self.send_raw(self.config.events_topic, event.user_id.encode("utf-8"), encode_event(event))

    def send_item(self, item: ItemMeta) -> None:
        self.send_raw(self.config.items_topic, item.item_id.encode("utf-8"), encode_item(item))

    def send_raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Queue already-encoded bytes (dead letters, replays, and malformed records in tests).
        A record without a key goes wherever kafka-python's partitioner puts it."""
        state = self._topics.get(topic) or self._start_topic(topic)
        if len(state.pending) >= state.collect_at:
            self._collect(topic, state)
        partition = None if key is None else state.partitioner(key)
        state.pending.append(self._producer.send(topic, key=key, value=value, partition=partition))
        self.sent[topic] += 1

    def _partition_count(self, topic: str) -> int:
        """Waits for the topic's metadata, as ``send`` would."""
        partitions = self._producer.partitions_for(topic)
        if not partitions or sorted(partitions) != list(range(len(partitions))):
            raise KafkaIOError(
                f"topic {topic!r} on {self.config.bootstrap}: expected partitions 0..n-1, got {partitions}"
            )
        return len(partitions)

    def _start_topic(self, topic: str) -> _TopicState:
        state = self._topics[topic] = _TopicState(self._partition_count(topic))
        return state

    def _collect(self, topic: str, state: _TopicState) -> None:
        """Count the failures among finished record futures and drop them; keep the unfinished ones.
        Also re-reads the partition count, so that added partitions are used as the default
        partitioner would use them after its next metadata refresh."""
        unfinished = []
        for future in state.pending:
            if not future.is_done:
                unfinished.append(future)
            elif future.exception is not None:
                self.failed[topic] += 1
                self._last_error = future.exception
        state.pending = unfinished
        state.collect_at = len(unfinished) + _COLLECT_EVERY
        partitions = self._partition_count(topic)
        if partitions != state.partitioner.partitions:
            state.partitioner = _KeyPartitions(partitions)

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every queued record is acknowledged or failed; raise if any failed."""
        self._producer.flush(timeout=timeout_s)
        for topic, state in self._topics.items():
            self._collect(topic, state)
        if self._last_error is not None:
            error, self._last_error = self._last_error, None
            raise KafkaIOError(
                f"producing to {self.config.bootstrap}: expected every record acknowledged, "
                f"{sum(self.failed.values())} failed so far ({dict(self.failed)}); last error: {error}"
            ) from error

    def close(self) -> None:
        self._producer.close()


# Offsets to commit for the partitions being revoked: (topic, partition) -> next offset to read.
RevokeHandler = Callable[[set[tuple[str, int]]], Mapping[tuple[str, int], int]]

# Commit refusals that mean "this member's generation is over" (a rebalance, an eviction): the
# records are not lost, whoever owns the partition next re-reads them from the last commit.
_MEMBERSHIP_ERRORS = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)


class CommitRefused(KafkaIOError):
    """The group refused a commit because a rebalance moved on; nothing is lost (at-least-once)."""


class _RevokeListener(AsyncConsumerRebalanceListener):
    """Hands revoked partitions to the consumer's revoke handler and commits what it returns.

    kafka-python 3 runs this on its IO thread, never on the loop's; with the eager protocol it does
    so only inside a join (driven by ``poll()``) or ``close()``, while the loop's thread is blocked
    in that call, so the handler sees the loop between two polls. It is async so that it can await
    the commit: a blocking ``commit()`` from the IO thread is refused by kafka-python.
    """

    def __init__(self, owner: EventConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        offsets = self._owner._handle_revoke(revoked)
        if not offsets:
            return
        try:
            await self._owner._consumer.commit_async(_offset_map(offsets))
        except KafkaError as exc:
            log.warning(
                "committing %s on revoke for group %r failed; the next owner re-reads from the "
                "previous commit (at-least-once): %s",
                dict(offsets),
                self._owner.config.group_id,
                exc,
            )
        else:
            self._owner.commits += 1

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Evicted from the group: a commit would be refused, so only the state is dropped.
        self._owner._handle_revoke(lost)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Partitions resume from their committed offsets, unless ``start_from`` says otherwise."""
        self._owner._seek_restored(assigned)


def _offset_map(next_offsets: Mapping[tuple[str, int], int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {
        TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
        for (topic, partition), offset in next_offsets.items()
    }


class EventConsumer:
    """The updater's consumer: a consumer group member reading raw bytes (``events.decode_event``
    turns bad bytes into a ``BadEvent`` instead of an exception here) and committing offsets only
    when told to, after their effect is durable.

    Rebalances use the eager protocol (range, round-robin assignors): every partition is revoked
    before a join, and the revoke handler (``set_revoke_handler``) says which offsets to commit
    first. Its records are processed one poll at a time by the caller, so the consumer buffers no
    more than kafka-python's fetch buffer (``fetch_max_bytes``).
    """

    def __init__(self, config: KafkaConfig, topic: str | None = None) -> None:
        self.config = config
        self._consumer = KafkaConsumer(
            bootstrap_servers=config.bootstrap,
            client_id="recsim-consumer",
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=config.max_poll_records,
            max_poll_interval_ms=config.max_poll_interval_ms,
            partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
            allow_auto_create_topics=False,
            # A member that joined before the broker's metadata listed a new topic's partitions gets
            # an empty assignment until the next metadata refresh (5 min by default); re-reading the
            # metadata every few seconds lets it rejoin with partitions soon after.
            metadata_max_age_ms=5000,
            metrics_enabled=False,
        )
        self._on_revoke: RevokeHandler = lambda _partitions: {}
        self._in_call = False  # the loop's thread is inside poll() or close()
        self.revocations = 0  # rebalances that took partitions away (or closed the consumer)
        self.commits = 0  # successful commits, from commit() and from revokes
        # Where each partition starts when first assigned (``start_from``); None: committed offsets.
        self._start: dict[tuple[str, int], int] | None = None
        self._started: set[tuple[str, int]] = set()
        self._await_partitions(topic or config.events_topic)
        self._consumer.subscribe([topic or config.events_topic], listener=_RevokeListener(self))

    def _await_partitions(self, topic: str, timeout_s: float = 30.0) -> None:
        """Join only once this client's metadata lists the topic's partitions: a member that joins
        before (a topic created a moment ago) is assigned nothing until a later metadata refresh."""
        deadline = time.monotonic() + timeout_s
        while not self._consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                raise KafkaIOError(
                    f"topic {topic!r} on {self.config.bootstrap}: expected partitions, got none after {timeout_s} s"
                )
            time.sleep(0.1)

    def start_from(self, next_offsets: Mapping[tuple[str, int], int]) -> None:
        """Read each partition, at its first assignment, from ``next_offsets`` (a checkpoint's), and a
        partition the checkpoint does not name from its beginning: the restored state has seen nothing
        of it. The group's committed offsets are ignored for these first assignments, since they may
        run ahead of the checkpoint. Call before the first poll."""
        self._start = dict(next_offsets)

    def _seek_restored(self, assigned: set[TopicPartition]) -> None:
        if self._start is None:
            return
        for tp in assigned:
            partition = (tp.topic, tp.partition)
            if partition in self._started:
                continue
            self._started.add(partition)
            offset = self._start.get(partition)
            if offset is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)
            log.info(
                "partition %s starts at %s (restored)",
                partition,
                "the beginning" if offset is None else offset,
            )

    def set_revoke_handler(self, handler: RevokeHandler) -> None:
        """``handler(partitions)`` runs before partitions are taken away and returns the next offsets
        to commit for them (only offsets whose records are fully processed)."""
        self._on_revoke = handler

    def _handle_revoke(self, revoked: set[TopicPartition]) -> Mapping[tuple[str, int], int]:
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        if not partitions:
            return {}
        if not self._in_call:
            raise KafkaIOError(
                f"group {self.config.group_id!r}: partitions {sorted(partitions)} were revoked while the "
                "loop was not inside poll() or close(); expected the eager protocol, which only revokes there"
            )
        self.revocations += 1
        offsets = self._on_revoke(partitions)
        unowned = set(offsets) - partitions
        if unowned:
            raise KafkaIOError(
                f"revoke handler returned offsets for {sorted(unowned)}, expected only the revoked {sorted(partitions)}"
            )
        return offsets

    def poll(self, timeout_ms: int | None = None) -> list[ConsumerRecord]:
        """Up to ``max_poll_records`` records in partition order; each has ``topic``, ``partition``,
        ``offset``, ``key`` and ``value`` (bytes or None). Rebalances (and the revoke handler) happen
        inside this call."""
        timeout = self.config.poll_timeout_ms if timeout_ms is None else timeout_ms
        self._in_call = True
        try:
            batches = self._consumer.poll(timeout_ms=timeout, max_records=self.config.max_poll_records)
        finally:
            self._in_call = False
        return [record for records in batches.values() for record in records]

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit, per (topic, partition), the offset of the next record to read after a restart.

        Raises ``CommitRefused`` when the group has moved on (rebalance, eviction), ``KafkaIOError``
        for anything else."""
        if not next_offsets:
            return
        try:
            self._consumer.commit(_offset_map(next_offsets))
        except _MEMBERSHIP_ERRORS as exc:
            raise CommitRefused(
                f"committing offsets {dict(next_offsets)} for group {self.config.group_id!r}: "
                f"the group rebalanced or evicted this member ({type(exc).__name__})"
            ) from exc
        except KafkaError as exc:
            raise KafkaIOError(
                f"committing offsets {dict(next_offsets)} for group {self.config.group_id!r}"
            ) from exc
        self.commits += 1

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between the position and the end of each assigned partition, from the highwater
        marks of the last fetch responses: no request. Partitions not fetched yet are left out."""
        lags = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            position = self._consumer.position(tp)  # local once a fetch has set it
            if position is not None:
                lags[(tp.topic, tp.partition)] = max(0, highwater - position)
        return lags

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop fetching these partitions (backpressure) without leaving the group."""
        self._consumer.pause(*(TopicPartition(t, p) for t, p in partitions))

    def resume(self, partitions: Iterable[tuple[str, int]]) -> None:
        self._consumer.resume(*(TopicPartition(t, p) for t, p in partitions))

    def close(self) -> None:
        """Leave the group; the revoke handler runs first (and may commit)."""
        self._in_call = True
        try:
            self._consumer.close(autocommit=False)
        finally:
            self._in_call = False


class ItemsReader:
    """Reads the compacted ``items`` topic from its beginning, outside any consumer group.

    Item metadata is state every updater rebuilds at start (the newest record per item id survives
    compaction), not work to share out or commit: so every partition is assigned to this reader and
    nothing is committed. Polls default to a zero timeout, so the updater's loop never waits on it;
    ``caught_up`` says when everything the topic held at start has been read, so the updater can
    load the catalogue before its first events (or a backlog would meet an empty catalogue).
    """

    def __init__(self, config: KafkaConfig, timeout_s: float = 30.0) -> None:
        self.config = config
        self._consumer = KafkaConsumer(
            bootstrap_servers=config.bootstrap,
            client_id="recsim-items-reader",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=config.max_poll_records,
            metrics_enabled=False,
        )
        deadline = time.monotonic() + timeout_s
        while not (partitions := self._consumer.partitions_for_topic(config.items_topic)):
            if time.monotonic() > deadline:
                self._consumer.close()
                raise KafkaIOError(
                    f"items topic {config.items_topic!r} on {config.bootstrap}: expected partitions "
                    f"within {timeout_s:.0f} s, found none (was ensure_topics run?)"
                )
            time.sleep(0.1)
        assigned = [TopicPartition(config.items_topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        self._consumer.seek_to_beginning(*assigned)
        self._ends_at_start = self._consumer.end_offsets(assigned)
        self._caught_up = False

    def caught_up(self) -> bool:
        """Whether every record the topic held when this reader started has been read."""
        if not self._caught_up:
            self._caught_up = all(
                self._consumer.position(tp) >= end for tp, end in self._ends_at_start.items()
            )
        return self._caught_up

    def poll(self, timeout_ms: int = 0) -> list[ConsumerRecord]:
        """Records fetched so far (up to ``max_poll_records``), each with ``topic``, ``partition``,
        ``offset``, ``key`` and ``value``."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.config.max_poll_records)
        return [record for records in batches.values() for record in records]

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class DeadLetterSink:
    """Sends refused records to ``config.dlq_topic`` (see dead_letter.py) and counts them per reason."""

    def __init__(self, producer: RecordProducer, clock: Callable[[], float] = time.time) -> None:
        self._producer = producer
        self._clock = clock
        self.counts: Counter[BadReason] = Counter()

    def send(self, record: ConsumerRecord, bad: BadEvent) -> None:
        letter = make_dead_letter(
            value=record.value,
            key=record.key,
            bad=bad,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            now=self._clock(),
        )
        self._producer.send_raw(self._producer.config.dlq_topic, record.key, encode_dead_letter(letter))
        self.counts[bad.reason] += 1

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout_s)
