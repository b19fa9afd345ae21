"""Kafka adapters (kafka-python): topic set-up, the record producer, the event consumer, dead letters.

The only module that imports ``kafka``; everything else sees bytes, ``Event`` and plain tuples.
Events are keyed by user id, so one user's events land in one partition, in order; items are keyed by
item id on a compacted topic, so the newest metadata of each item is kept.

Measured against the local broker (``deploy/kafka``) on the shared 2-core machine, 100k encoded
events, median of 3: kafka-python's producer with these settings about 35-40k records/s at load ~3
and 11-12k records/s at load ~8 (this wrapper); consuming 32k records/s at load ~8. The producer is
bound by kafka-python's per-record Python work (send, accumulator, partitioner), not by the broker:
``linger_ms`` 5-10 with 64-256 KiB batches measured no faster, so it keeps kafka-python's batching
defaults (``KafkaConfig.producer_*``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from recsim_stream.config import KafkaConfig
from recsim_stream.dead_letter import encode_dead_letter, make_dead_letter
from recsim_stream.events import BadEvent, BadReason, Event, ItemMeta, encode_event, encode_item

__all__ = ["ConsumerRecord", "DeadLetterSink", "EventConsumer", "KafkaIOError", "RecordProducer"]

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


class RecordProducer:
    """Sends events keyed by user id and item metadata keyed by item id; counts what it queued and
    what the broker refused. ``flush`` raises if any record since the last flush was lost."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._producer = KafkaProducer(
            bootstrap_servers=config.bootstrap,
            client_id="recsim-producer",
            # Leader acknowledgement: enough on the single local broker and faster than acks=all.
            acks=1,
            enable_idempotence=False,
            linger_ms=config.producer_linger_ms,
            batch_size=config.producer_batch_bytes,
            # Its own metrics cost CPU per record; ours live in metrics.py.
            metrics_enabled=False,
        )
        self.sent: Counter[str] = Counter()  # records queued, per topic
        self.failed: Counter[str] = Counter()  # records the broker refused or that timed out, per topic
        self._last_error: Exception | None = None

    def send_event(self, event: Event) -> None:
        self.send_raw(self.config.events_topic, event.user_id.encode("utf-8"), encode_event(event))

    def send_item(self, item: ItemMeta) -> None:
        self.send_raw(self.config.items_topic, item.item_id.encode("utf-8"), encode_item(item))

    def send_raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Queue already-encoded bytes (dead letters, replays, and malformed records in tests)."""
        future = self._producer.send(topic, key=key, value=value)
        future.add_errback(self._on_error, topic)
        self.sent[topic] += 1

    def _on_error(self, topic: str, error: Exception) -> None:
        self.failed[topic] += 1
        self._last_error = error

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every queued record is acknowledged or failed; raise if any failed."""
        self._producer.flush(timeout=timeout_s)
        if self._last_error is not None:
            error, self._last_error = self._last_error, None
            raise KafkaIOError(
                f"producing to {self.config.bootstrap}: expected every record acknowledged, "
                f"{sum(self.failed.values())} failed so far ({dict(self.failed)}); last error: {error}"
            ) from error

    def close(self) -> None:
        self._producer.close()


class EventConsumer:
    """The updater's consumer: a consumer group member reading raw bytes (``events.decode_event``
    turns bad bytes into a ``BadEvent`` instead of an exception here) and committing offsets only
    when told to, after their effect is durable."""

    def __init__(self, config: KafkaConfig, topic: str | None = None) -> None:
        self.config = config
        self._consumer = KafkaConsumer(
            topic or config.events_topic,
            bootstrap_servers=config.bootstrap,
            client_id="recsim-consumer",
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=config.max_poll_records,
            allow_auto_create_topics=False,
            metrics_enabled=False,
        )

    def poll(self, timeout_ms: int | None = None) -> list[ConsumerRecord]:
        """Up to ``max_poll_records`` records in partition order; each has ``topic``, ``partition``,
        ``offset``, ``key`` and ``value`` (bytes or None)."""
        timeout = self.config.poll_timeout_ms if timeout_ms is None else timeout_ms
        batches = self._consumer.poll(timeout_ms=timeout, max_records=self.config.max_poll_records)
        return [record for records in batches.values() for record in records]

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit, per (topic, partition), the offset of the next record to read after a restart."""
        try:
            self._consumer.commit(
                {
                    TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                    for (topic, partition), offset in next_offsets.items()
                }
            )
        except KafkaError as exc:
            raise KafkaIOError(
                f"committing offsets {dict(next_offsets)} for group {self.config.group_id!r}"
            ) from exc

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop fetching these partitions (backpressure) without leaving the group."""
        self._consumer.pause(*(TopicPartition(t, p) for t, p in partitions))

    def resume(self, partitions: Iterable[tuple[str, int]]) -> None:
        self._consumer.resume(*(TopicPartition(t, p) for t, p in partitions))

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
