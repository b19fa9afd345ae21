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

Broker outages. What kafka-python 3.0.12 does when the broker goes away, measured by stopping and
restarting a local broker (tests/integration/test_broker_outage.py), and what this module adds:

- Reconnects back off exponentially from ``reconnect_backoff_ms`` (50 ms) to ``reconnect_backoff_max_ms``
  (30 s by default) with +-20% jitter; with that default the updater trained again only 26-33 s
  after the broker was back (with 1 s: 0.8-2.3 s). ``kafka.reconnect_backoff_max_ms`` (1 s) is
  passed to every client.
- ``KafkaConsumer.poll`` raises nothing while the broker is down: it returns no records after its
  timeout, without spinning. ``EventConsumer.poll`` therefore returns ``[]`` and tells the outage from
  an idle topic by the client's connections (``_reaches_broker``: kafka-python has no public API).
- ``KafkaConsumer.commit`` retries retriable errors itself (every ``retry_backoff_ms``) until its
  timeout, then raises ``KafkaTimeoutError``; ``EventConsumer.commit`` bounds it by
  ``kafka.commit_timeout_ms`` and raises ``BrokerUnavailable``, a ``CommitRefused``: the updater keeps
  the offsets pending and commits them with a later poll.
- The producer retries every batch itself (``retries`` is infinite, idempotence keeps order and drops
  duplicates) for ``delivery_timeout_ms`` (120 s); after that its records fail with
  ``KafkaTimeoutError``. ``RecordProducer`` sends such records again (counted as retries), so an
  outage delays records and never drops one; only a record re-sent after that timeout may land twice.
  kafka-python 3's accumulator has no memory bound (no ``buffer_memory``) and ``send`` never blocks on
  an unreachable broker, so ``RecordProducer`` blocks ``send`` itself beyond
  ``kafka.producer_max_unacked`` unacknowledged records.
- Not fixable here: while the broker is down and records are pending for partitions whose leader it
  reported as gone (a controlled shutdown of the only broker), kafka-python's sender thread spins
  (each loop requests a metadata update, which wakes its own selector): 35-80% of a core measured.
  Blocking ``send`` at the bound caps the records, not that spin.

Each client logs one WARNING when an outage starts (the broker, the operation, the error) and one
when it ends (its duration), and sets ``recsim_kafka_connected{client}`` and
``recsim_kafka_retries_total{client,operation}`` (metrics.KafkaMetrics), never a line per retry.
kafka-python itself logs every failed reconnect and metadata refresh at WARNING or ERROR (~18 lines a
second from the outage test's three clients): those records are dropped here unless the kafka loggers are set
to DEBUG (``_drop_reconnect_noise``).

kafka-python 3's network thread also warns whenever one step of its I/O loop takes over 0.1 s ("Task
... is blocking the event loop"). During a backlog the updater's thread holds the GIL for most of
each batch, so that thread waits for it and the warning came every second or two (0.1-0.24 s steps),
for no fault. Those are dropped below ``SLOW_STEP_REPORTED_S``; a longer step, which would delay
heartbeats and fetches noticeably, is still logged (``_drop_short_slow_steps``).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping

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
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumberError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    UnknownProducerIdError,
)
from kafka.partitioner.default import murmur2
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from recsim_stream.backoff import Backoff, Outage
from recsim_stream.config import KafkaConfig
from recsim_stream.dead_letter import encode_dead_letter, make_dead_letter
from recsim_stream.events import BadEvent, BadReason, Event, ItemMeta, encode_event, encode_item
from recsim_stream.metrics import KafkaMetrics

__all__ = [
    "AssignHandler",
    "BrokerUnavailable",
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


class _Health:
    """One client's view of the broker: one WARNING when an outage starts (the broker, the operation,
    the error) and one when it ends (how long it lasted, how many attempts failed), the
    ``recsim_kafka_connected`` gauge, and a retry count per failed attempt; never a line per retry."""

    def __init__(self, client: str, bootstrap: str, metrics: KafkaMetrics | None) -> None:
        self.client = client
        self.bootstrap = bootstrap
        self.metrics = metrics
        self.outage = Outage()
        self.outages = 0  # outages ended so far
        self.last_outage_s: float | None = None
        if metrics is not None:
            metrics.register(client)

    def down(self, operation: str, error: object, attempts: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.retries.labels(self.client, operation).inc(attempts)
        if self.outage.fail(time.monotonic()):
            log.warning(
                "kafka %s: broker %s unreachable while trying to %s (%s); retrying with backoff",
                self.client,
                self.bootstrap,
                operation,
                error,
            )
            if self.metrics is not None:
                self.metrics.connected.labels(self.client).set(0)

    def up(self) -> None:
        failures = self.outage.failures
        lasted = self.outage.recover(time.monotonic())
        if lasted is None:
            return
        self.outages += 1
        self.last_outage_s = lasted
        log.warning(
            "kafka %s: broker %s reachable again after %.1f s (%d failed attempts)",
            self.client,
            self.bootstrap,
            lasted,
            failures,
        )
        if self.metrics is not None:
            self.metrics.connected.labels(self.client).set(1)


# kafka-python's loggers that report each failed attempt to reach a broker.
_RECONNECT_LOGGERS = (
    "kafka.net.manager",
    "kafka.net.connection",
    "kafka.net.transport",
    "kafka.cluster",
    "kafka.coordinator",
)
_RECONNECT_NOISE = ("KafkaConnectionError", "No node available", "socket disconnected")


def _drop_reconnect_noise(record: logging.LogRecord) -> bool:
    """A logging filter: keep a record unless it reports one more failed attempt to reach a broker
    (kept anyway when its logger is set to DEBUG, for troubleshooting a connection)."""
    if logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
        return True
    message = record.getMessage()
    return not any(noise in message for noise in _RECONNECT_NOISE)


for _name in _RECONNECT_LOGGERS:
    logging.getLogger(_name).addFilter(_drop_reconnect_noise)

SLOW_STEP_REPORTED_S = 1.0  # kafka-python's own threshold is 0.1 s (NetworkSelector)
_SLOW_STEP = re.compile(r"ran for ([0-9.]+)s .*blocking the event loop")


def _drop_short_slow_steps(record: logging.LogRecord) -> bool:
    """A logging filter: drop kafka-python's "blocking the event loop" warning when the step took less
    than ``SLOW_STEP_REPORTED_S`` (kept at DEBUG, and whenever the message is not the one parsed)."""
    if logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
        return True
    found = _SLOW_STEP.search(record.getMessage())
    return found is None or float(found.group(1)) >= SLOW_STEP_REPORTED_S


logging.getLogger("kafka.net.selector").addFilter(_drop_short_slow_steps)


def _reaches_broker(manager: object) -> bool:
    """Whether a kafka-python 3 client holds a live connection to any broker. kafka-python has no
    public call for it; this reads its connection manager's table (``KafkaConnectionManager._conns``)."""
    return any(conn.connected for conn in list(manager._conns.values()))  # type: ignore[attr-defined]


# Producer failures worth sending the record again for: the broker was unreachable (retriable errors,
# a delivery timeout), or it lost this producer's idempotence state (kafka-python bumps the epoch).
_RESEND_ERRORS = (OutOfOrderSequenceNumberError, UnknownProducerIdError, InvalidProducerEpochError)


def _worth_resending(error: BaseException) -> bool:
    return isinstance(error, _RESEND_ERRORS) or (isinstance(error, KafkaError) and error.retriable)


def _backoff(config: KafkaConfig) -> Backoff:
    """Waits between attempts: from 0.1 s up to ``reconnect_backoff_max_ms``, like the client's."""
    cap = config.reconnect_backoff_max_ms / 1000
    return Backoff(initial_s=min(0.1, cap), max_s=cap, rng=random.Random())


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


# Records sent between two looks at the producer's connections (at most one a second).
_OBSERVE_EVERY = 1024

# A record as sent: its future, and what it takes to send it again (key, value, partition).
_Sent = tuple[FutureRecordMetadata, bytes | None, bytes | None, int | None]


class _TopicState:
    """What the producer keeps per topic: the key partitioner and the records not yet seen finished."""

    def __init__(self, partitions: int) -> None:
        self.partitioner = _KeyPartitions(partitions)
        self.pending: list[_Sent] = []
        self.collect_at = _COLLECT_EVERY


class RecordProducer:
    """Sends events keyed by user id and item metadata keyed by item id; counts what it queued and
    what the broker refused. ``flush`` raises if any record since the last flush was refused for good.

    Built for kafka-python's per-record cost, which bounds the simulator and replay here: the
    partition of each key is computed once (murmur2, as the default and Java partitioners do, so keys
    land where other clients put them) and passed explicitly; failures are read from the record
    futures in bulk rather than through a callback per record. Idempotence (the client default) keeps
    one partition's records in order across retries with up to 5 requests in flight.

    Broker outages (module docstring): records the client gave up on after its delivery timeout are
    sent again; ``send`` blocks while ``kafka.producer_max_unacked`` records are unacknowledged and
    ``flush`` until every record is acknowledged, both waiting with capped exponential backoff.
    """

    def __init__(self, config: KafkaConfig, metrics: KafkaMetrics | None = None) -> None:
        self.config = config
        self._producer = KafkaProducer(
            bootstrap_servers=config.bootstrap,
            client_id="recsim-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=config.producer_linger_ms,
            batch_size=config.producer_batch_bytes,
            reconnect_backoff_max_ms=config.reconnect_backoff_max_ms,
            # Its own metrics cost CPU per record; ours live in metrics.py.
            metrics_enabled=False,
        )
        self.sent: Counter[str] = Counter()  # records queued, per topic (a record sent again counts once)
        self.failed: Counter[str] = Counter()  # records the broker refused for good, per topic
        self.resent: Counter[str] = Counter()  # records sent again after a retriable failure, per topic
        self._last_error: Exception | None = None
        self._topics: dict[str, _TopicState] = {}
        self.health = _Health("producer", config.bootstrap, metrics)
        self._backoff = _backoff(config)
        self._manager = self._producer._sender._client._manager  # for _reaches_broker
        self._until_observe = _OBSERVE_EVERY
        self._observe_at = 0.0

    def send_event(self, event: Event) -> None:
        self.send_raw(self.config.events_topic, event.user_id.encode("utf-8"), encode_event(event))

    def send_item(self, item: ItemMeta) -> None:
        self.send_raw(self.config.items_topic, item.item_id.encode("utf-8"), encode_item(item))

    def send_item_deletion(self, item_id: str) -> None:
        """A tombstone: the item's key and no value, which compaction keeps until it drops the key."""
        self.send_raw(self.config.items_topic, item_id.encode("utf-8"), None)

    def send_raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Queue already-encoded bytes (dead letters, replays, and malformed records in tests).
        A record without a key goes wherever kafka-python's partitioner puts it. Blocks while
        ``kafka.producer_max_unacked`` records are unacknowledged (the broker is slow or away)."""
        state = self._topics.get(topic) or self._start_topic(topic)
        if len(state.pending) >= state.collect_at:
            self._collect(topic, state)
            while self._unacked() >= self.config.producer_max_unacked:
                self._await_acks("send", None)
        partition = None if key is None else state.partitioner(key)
        state.pending.append(
            (self._producer.send(topic, key=key, value=value, partition=partition), key, value, partition)
        )
        self.sent[topic] += 1
        self._until_observe -= 1
        if self._until_observe <= 0:
            self._observe_connections()

    def _observe_connections(self) -> None:
        """An outage while records only go in (nothing waits for them yet): records pending and no
        live connection to any broker. Looked at once a second at most, every 1024 records."""
        self._until_observe = _OBSERVE_EVERY
        now = time.monotonic()
        if now < self._observe_at:
            return
        self._observe_at = now + 1.0
        if _reaches_broker(self._manager):
            self.health.up()
        elif any(state.pending for state in self._topics.values()):
            self.health.down("send", "no connection to any broker")

    def _partition_count(self, topic: str) -> int:
        """Waits for the topic's metadata, as ``send`` would: up to kafka-python's ``max_block_ms`` per
        attempt, again and again while the broker is unreachable."""
        while True:
            try:
                partitions = self._producer.partitions_for(topic)
                break
            except KafkaTimeoutError as exc:
                self.health.down("send", exc)
        if not partitions or sorted(partitions) != list(range(len(partitions))):
            raise KafkaIOError(
                f"topic {topic!r} on {self.config.bootstrap}: expected partitions 0..n-1, got {partitions}"
            )
        return len(partitions)

    def _start_topic(self, topic: str) -> _TopicState:
        state = self._topics[topic] = _TopicState(self._partition_count(topic))
        return state

    def _collect(self, topic: str, state: _TopicState) -> None:
        """Drop the acknowledged records, count those refused for good, send again those that failed
        with a retriable error (the broker was away past the delivery timeout); keep the rest. Also
        re-reads the partition count, so that added partitions are used as the default partitioner
        would use them after its next metadata refresh."""
        unfinished: list[_Sent] = []
        again: list[_Sent] = []
        for sent in state.pending:
            future = sent[0]
            if not future.is_done:
                unfinished.append(sent)
            elif future.exception is not None:
                if _worth_resending(future.exception):
                    again.append(sent)
                else:
                    self.failed[topic] += 1
                    self._last_error = future.exception
        for _future, key, value, partition in again:
            future = self._producer.send(topic, key=key, value=value, partition=partition)
            unfinished.append((future, key, value, partition))
        if again:
            self.resent[topic] += len(again)
            self.health.down("send", again[0][0].exception, attempts=len(again))
        state.pending = unfinished
        state.collect_at = len(unfinished) + _COLLECT_EVERY
        partitions = self._partition_count(topic)
        if partitions != state.partitioner.partitions:
            state.partitioner = _KeyPartitions(partitions)

    def _unacked(self) -> int:
        return sum(len(state.pending) for state in self._topics.values())

    def _await_acks(self, operation: str, deadline: float | None) -> None:
        """Wait one backoff delay (at most until the monotonic ``deadline``) for acknowledgements, then
        collect. None arrived and no live connection: one failed attempt of an outage (a broker that is
        reachable but slow to acknowledge, under load or electing leaders, is not an outage)."""
        before = self._unacked()
        delay = self._backoff.next_delay()
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.monotonic()))
        try:
            self._producer.flush(timeout=delay)
        except KafkaTimeoutError:
            pass
        for topic, state in self._topics.items():
            self._collect(topic, state)
        after = self._unacked()
        if after < before or after == 0:
            if after == 0:  # while acknowledgements trickle in, keep the wait (and the rescans) long
                self._backoff.reset()
            self.health.up()
        elif not _reaches_broker(self._manager):
            self.health.down(operation, f"{after} records unacknowledged, no connection to any broker")

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every queued record is acknowledged (records that failed with a retriable error
        are sent again, so an outage only delays them); raise ``KafkaIOError`` if a record was refused
        for good, or if records are still unacknowledged after ``timeout_s`` (None: wait on)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for topic, state in self._topics.items():
            self._collect(topic, state)
        while unacked := self._unacked():
            if deadline is not None and time.monotonic() >= deadline:
                raise KafkaIOError(
                    f"producing to {self.config.bootstrap}: expected every record acknowledged within "
                    f"{timeout_s} s, {unacked} are not"
                )
            self._await_acks("flush", deadline)
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
# Partitions just assigned -> the offset each resumes from (None: from the beginning, nothing committed).
AssignHandler = Callable[[Mapping[tuple[str, int], int | None]], None]

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


class BrokerUnavailable(CommitRefused):
    """A commit found no broker (or group coordinator) to answer within ``kafka.commit_timeout_ms``.
    Nothing is lost: keep the offsets pending and commit them again with a later poll, as for any
    ``CommitRefused``; the consumer has already logged the outage."""


_COMMITTED = object()  # a newly assigned partition resumes from the group's committed offset


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
        """Partitions resume from their committed offsets, unless ``start_from`` says otherwise.
        They stay paused until ``poll()`` has told the assign handler where each resumes."""
        restored = self._owner._seek_restored(assigned)
        self._owner._hold_assigned(assigned, restored)


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
    more than kafka-python's fetch buffer (``fetch_max_bytes``). Newly assigned partitions stay paused
    until the end of a ``poll()``, where the assign handler (``set_assign_handler``) learns on the
    caller's thread the offset each resumes from, before any of their records: the session hand-off
    between updaters (handoff.py) needs that offset. kafka-python may finish its assignment callback
    after ``poll()`` returned, which is why nothing in that callback waits on the network.
    """

    def __init__(
        self, config: KafkaConfig, topic: str | None = None, metrics: KafkaMetrics | None = None
    ) -> None:
        self.config = config
        self._consumer = KafkaConsumer(
            bootstrap_servers=config.bootstrap,
            client_id="recsim-consumer",
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=config.max_poll_records,
            max_poll_interval_ms=config.max_poll_interval_ms,
            session_timeout_ms=config.session_timeout_ms,
            group_instance_id=config.group_instance_id or None,
            partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
            allow_auto_create_topics=False,
            # A member that joined before the broker's metadata listed a new topic's partitions gets
            # an empty assignment until the next metadata refresh (5 min by default); re-reading the
            # metadata every few seconds lets it rejoin with partitions soon after.
            metadata_max_age_ms=5000,
            reconnect_backoff_max_ms=config.reconnect_backoff_max_ms,
            metrics_enabled=False,
        )
        self._on_revoke: RevokeHandler = lambda _partitions: {}
        self._on_assign: AssignHandler = lambda _resume_at: None
        # Partitions assigned but not yet announced to the assign handler (held paused), with where
        # each starts; None: no assignment pending.
        self._announce: dict[TopicPartition, int | None | object] | None = None
        self.assignments = 0  # rebalances that gave this member partitions
        self._topic = topic or config.events_topic
        self._in_call = False  # the loop's thread is inside poll() or close()
        self.revocations = 0  # rebalances that took partitions away (or closed the consumer)
        self.commits = 0  # successful commits, from commit() and from revokes
        # Where each partition starts when first assigned (``start_from``); None: committed offsets.
        self._start: dict[tuple[str, int], int] | None = None
        self._started: set[tuple[str, int]] = set()
        self.health = _Health("events_consumer", config.bootstrap, metrics)
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

    def _seek_restored(self, assigned: set[TopicPartition]) -> dict[tuple[str, int], int | None]:
        """Seek the partitions assigned for the first time since ``start_from``; returns where they start."""
        started: dict[tuple[str, int], int | None] = {}
        if self._start is None:
            return started
        for tp in assigned:
            partition = (tp.topic, tp.partition)
            if partition in self._started:
                continue
            self._started.add(partition)
            offset = started[partition] = self._start.get(partition)
            if offset is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)
            log.info(
                "partition %s starts at %s (restored)",
                partition,
                "the beginning" if offset is None else offset,
            )
        return started

    def _hold_assigned(
        self, assigned: set[TopicPartition], restored: Mapping[tuple[str, int], int | None]
    ) -> None:
        """In the assignment callback: pause the new partitions, so none of their records is fetched
        before ``_announce_assigned`` (on the loop's thread, no network call here) has told the
        assign handler where each one resumes. The callback may finish after ``poll()`` returned."""
        self._consumer.pause(*assigned)
        self._announce = {tp: restored.get((tp.topic, tp.partition), _COMMITTED) for tp in assigned}

    def _announce_assigned(self) -> None:
        """Inside ``poll()``: fetch the committed offsets of newly assigned partitions, pin each to its
        offset, call the assign handler with them, and let their records flow. If the broker does not
        answer, they stay paused until a later poll."""
        announce = self._announce
        if announce is None:
            return
        need = {tp for tp, start in announce.items() if start is _COMMITTED}
        try:
            committed = (
                self._consumer._coordinator.fetch_committed_offsets(
                    need, timeout_ms=self.config.commit_timeout_ms
                )
                if need
                else {}
            )
        except KafkaError as exc:
            self.health.down("fetch committed offsets", exc)
            return
        resume: dict[tuple[str, int], int | None] = {}
        for tp, start in announce.items():
            if start is _COMMITTED:
                meta = committed.get(tp)
                start = meta.offset if meta is not None and meta.offset >= 0 else None
                if start is not None:
                    self._consumer.seek(tp, start)
            resume[(tp.topic, tp.partition)] = start
        if self._announce is announce:  # not replaced by a late callback meanwhile
            self._announce = None
        self.assignments += 1
        self._on_assign(resume)
        self._consumer.resume(*(set(announce) & self._consumer.assignment()))

    def set_assign_handler(self, handler: AssignHandler) -> None:
        """``handler(resume_at)`` runs on the caller's thread at the end of the ``poll()`` in which
        partitions were assigned, before any of their records is returned; ``resume_at`` maps each
        to the offset reading resumes from (None: the beginning, nothing committed)."""
        self._on_assign = handler

    def committed_offsets(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets for every partition of the topic that has one (a blocking
        request; call between polls). Raises ``BrokerUnavailable`` when the broker does not answer."""
        partitions = [
            TopicPartition(self._topic, p)
            for p in sorted(self._consumer.partitions_for_topic(self._topic) or ())
        ]
        try:
            committed = self._consumer._coordinator.fetch_committed_offsets(
                partitions, timeout_ms=self.config.commit_timeout_ms
            )
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"fetching the committed offsets of group {self.config.group_id!r} from {self.config.bootstrap}: {exc}"
            ) from exc
        return {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items() if meta.offset >= 0}

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
        if self._announce is not None:  # assigned and taken back before poll() announced them
            self._announce = {tp: start for tp, start in self._announce.items() if tp not in revoked}
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
        inside this call. While the broker is unreachable: ``[]`` after the full timeout."""
        timeout = self.config.poll_timeout_ms if timeout_ms is None else timeout_ms
        self._in_call = True
        try:
            records = _poll(self._consumer, timeout, self.config.max_poll_records, self.health)
        finally:
            self._in_call = False
        self._announce_assigned()
        return records

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit, per (topic, partition), the offset of the next record to read after a restart.

        Raises ``CommitRefused`` when the group has moved on (rebalance, eviction), ``BrokerUnavailable``
        (a ``CommitRefused``) when the broker did not answer within ``kafka.commit_timeout_ms``,
        ``KafkaIOError`` for anything else."""
        if not next_offsets:
            return
        try:
            self._consumer.commit(_offset_map(next_offsets), timeout_ms=self.config.commit_timeout_ms)
        except _MEMBERSHIP_ERRORS as exc:
            raise CommitRefused(
                f"committing offsets {dict(next_offsets)} for group {self.config.group_id!r}: "
                f"the group rebalanced or evicted this member ({type(exc).__name__})"
            ) from exc
        except KafkaError as exc:
            if exc.retriable:  # kafka-python retried until commit_timeout_ms: the broker is away
                self.health.down("commit", exc)
                raise BrokerUnavailable(
                    f"committing offsets {dict(next_offsets)} for group {self.config.group_id!r}: no "
                    f"answer from {self.config.bootstrap} within {self.config.commit_timeout_ms} ms "
                    f"({type(exc).__name__})"
                ) from exc
            raise KafkaIOError(
                f"committing offsets {dict(next_offsets)} for group {self.config.group_id!r}"
            ) from exc
        self.commits += 1
        self.health.up()

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between the position and the end of each assigned partition, from the highwater
        marks of the last fetch responses: no request, never raises, never waits (during an outage,
        the figures of the last fetches). Partitions not fetched yet are left out."""
        lags = {}
        for tp in self._consumer.assignment():
            try:
                highwater = self._consumer.highwater(tp)
                position = None if highwater is None else self._consumer.position(tp, timeout_ms=0)
            except KafkaError:  # revoked in between, or a reset that needs the broker
                continue
            if highwater is not None and position is not None:
                lags[(tp.topic, tp.partition)] = max(0, highwater - position)
        return lags

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def close(self) -> None:
        """Leave the group; the revoke handler runs first (and may commit)."""
        self._in_call = True
        try:
            self._consumer.close(autocommit=False)
        finally:
            self._in_call = False


def _poll(
    consumer: KafkaConsumer, timeout_ms: int, max_records: int, health: _Health
) -> list[ConsumerRecord]:
    """One poll that absorbs an outage: kafka-python returns nothing while the broker is down (and
    would raise only a retriable error, after which the rest of the timeout is waited out, so a loop
    around this never spins). No records and no live connection is one failed attempt of an outage."""
    started = time.monotonic()
    try:
        batches = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
    except KafkaError as exc:
        if not exc.retriable:
            raise
        health.down("poll", exc)
        time.sleep(max(0.0, timeout_ms / 1000 - (time.monotonic() - started)))
        return []
    records = [record for records in batches.values() for record in records]
    if records or _reaches_broker(consumer._manager):  # type: ignore[attr-defined]
        health.up()
    else:
        health.down("poll", "no connection to any broker")
    return records


class ItemsReader:
    """Reads the compacted ``items`` topic from its beginning, outside any consumer group.

    Item metadata is state every updater rebuilds at start (the newest record per item id survives
    compaction), not work to share out or commit: so every partition is assigned to this reader and
    nothing is committed. Polls default to a zero timeout, so the updater's loop never waits on it;
    ``caught_up`` says when everything the topic held at start has been read, so the updater can
    load the catalogue before its first events (or a backlog would meet an empty catalogue).
    """

    def __init__(
        self, config: KafkaConfig, timeout_s: float = 30.0, metrics: KafkaMetrics | None = None
    ) -> None:
        self.config = config
        self._consumer = KafkaConsumer(
            bootstrap_servers=config.bootstrap,
            client_id="recsim-items-reader",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=config.max_poll_records,
            reconnect_backoff_max_ms=config.reconnect_backoff_max_ms,
            metrics_enabled=False,
        )
        self.health = _Health("items_reader", config.bootstrap, metrics)
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
        """Whether every record the topic held when this reader started has been read (False while
        a position still needs the broker, which may be away)."""
        if not self._caught_up:
            try:
                positions = {tp: self._consumer.position(tp, timeout_ms=0) for tp in self._ends_at_start}
            except KafkaError:
                return False
            self._caught_up = all(
                positions[tp] is not None and positions[tp] >= end for tp, end in self._ends_at_start.items()
            )
        return self._caught_up

    def poll(self, timeout_ms: int = 0) -> list[ConsumerRecord]:
        """Records fetched so far (up to ``max_poll_records``), each with ``topic``, ``partition``,
        ``offset``, ``key`` and ``value``; ``[]`` while the broker is unreachable."""
        return _poll(self._consumer, timeout_ms, self.config.max_poll_records, self.health)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class DeadLetterSink:
    """Sends refused records to ``config.dlq_topic`` (see dead_letter.py) and counts them per reason.
    ``flush`` returns once every dead letter is durable, waiting out a broker outage (with backoff)
    however long it lasts: a dead letter must be durable before its offset is committed."""

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


def read_topic(config: KafkaConfig, topic: str, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` from its start up to its end offsets now (tools, drills, tests)."""
    consumer = KafkaConsumer(
        bootstrap_servers=config.bootstrap, enable_auto_commit=False, metrics_enabled=False
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        expected = sum(consumer.end_offsets(partitions).values())
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    if len(records) != expected:
        raise KafkaIOError(
            f"{topic} on {config.bootstrap}: read {len(records)} of {expected} records in {timeout_s} s"
        )
    return records


def end_offsets(config: KafkaConfig, topic: str) -> dict[tuple[str, int], int]:
    """The offset after the last record of each partition of ``topic`` now."""
    consumer = KafkaConsumer(
        bootstrap_servers=config.bootstrap, enable_auto_commit=False, metrics_enabled=False
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {(tp.topic, tp.partition): offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()
