"""kafka_io against a real broker: topics, keyed produce/consume, commits, dead letters."""

from __future__ import annotations

import time
from collections import defaultdict

import msgpack
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from recsim_stream.config import KafkaConfig
from recsim_stream.dead_letter import decode_dead_letter
from recsim_stream.events import BadEvent, BadReason, Event, EventKind, ItemMeta, decode_event, decode_item
from recsim_stream.kafka_io import (
    ConsumerRecord,
    DeadLetterSink,
    EventConsumer,
    RecordProducer,
    ensure_topics,
)

pytestmark = pytest.mark.integration


def consume(consumer: EventConsumer, count: int, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """Poll until ``count`` records arrived (or fail after ``timeout_s``)."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(timeout_ms=500))
    assert len(records) == count, f"expected {count} records within {timeout_s}s, got {len(records)}"
    return records


def make_events(users: int, per_user: int) -> list[Event]:
    return [
        Event(f"user-{u}", f"item-{(u * 31 + n) % 97}", EventKind.CLICK, 1_700_000_000.0 + n, f"s-{u}")
        for n in range(per_user)
        for u in range(users)
    ]


def test_ensure_topics_twice_keeps_partitions_and_compacts_items(kafka_config: KafkaConfig) -> None:
    ensure_topics(kafka_config)  # the fixture already created them once
    admin = KafkaAdminClient(bootstrap_servers=kafka_config.bootstrap)
    try:
        topics = admin.describe_topics([kafka_config.events_topic, kafka_config.dlq_topic])
        resource = ConfigResource(ConfigResourceType.TOPIC, kafka_config.items_topic, ["cleanup.policy"])
        described = admin.describe_configs([resource])
    finally:
        admin.close()
    assert {t["name"]: len(t["partitions"]) for t in topics} == {
        kafka_config.events_topic: 4,
        kafka_config.dlq_topic: 1,
    }
    assert described["topic"][kafka_config.items_topic]["cleanup.policy"]["value"] == "compact"


def test_every_event_arrives_once_with_its_user_key_and_one_partition_per_user(
    kafka_config: KafkaConfig,
) -> None:
    events = make_events(users=25, per_user=20)
    producer = RecordProducer(kafka_config)
    for event in events:
        producer.send_event(event)
    producer.flush()
    producer.close()
    consumer = EventConsumer(kafka_config)
    try:
        records = consume(consumer, len(events))
    finally:
        consumer.close()
    partitions_of_user: dict[str, set[int]] = defaultdict(set)
    for record in records:
        partitions_of_user[record.key.decode()].add(record.partition)
    decoded = [decode_event(record.value) for record in records]
    assert producer.sent == {kafka_config.events_topic: 500}
    assert all(record.key.decode() == event.user_id for record, event in zip(records, decoded, strict=True))
    assert sorted(decoded, key=repr) == sorted(events, key=repr)
    assert {user: len(parts) for user, parts in partitions_of_user.items()} == {
        f"user-{u}": 1 for u in range(25)
    }
    assert len({p for parts in partitions_of_user.values() for p in parts}) > 1


def test_items_arrive_keyed_by_item_id(kafka_config: KafkaConfig) -> None:
    item = ItemMeta("item-7", "Phone X", "electronics.smartphone", 199.0, {"brand": "acme"}, 1_700_000_000.0)
    producer = RecordProducer(kafka_config)
    producer.send_item(item)
    producer.flush()
    producer.close()
    consumer = EventConsumer(kafka_config, topic=kafka_config.items_topic)
    try:
        (record,) = consume(consumer, 1)
    finally:
        consumer.close()
    assert record.key == b"item-7"
    assert decode_item(record.value) == item


def test_a_new_consumer_of_the_group_resumes_after_the_committed_offsets(kafka_config: KafkaConfig) -> None:
    producer = RecordProducer(kafka_config)
    for event in make_events(users=1, per_user=10):
        producer.send_event(event)
    producer.flush()
    producer.close()
    first = EventConsumer(kafka_config)
    try:
        records = consume(first, 10)
        first.commit({(records[5].topic, records[5].partition): records[5].offset + 1})
    finally:
        first.close()
    second = EventConsumer(kafka_config)
    try:
        resumed = consume(second, 4)
    finally:
        second.close()
    assert [r.offset for r in resumed] == [r.offset for r in records[6:]]


def test_invalid_records_land_in_the_dead_letter_topic_with_reason_and_source(
    kafka_config: KafkaConfig,
) -> None:
    valid = Event("user-1", "item-1", EventKind.PURCHASE, 1_700_000_000.0)
    sent = [
        (b"user-1", b"\xc1 not msgpack"),
        (b"user-1", msgpack.packb({"v": 2, "u": "user-1", "i": "item-1", "k": "click", "t": 1.0})),
        (b"user-1", msgpack.packb({"v": 1, "u": "user-1", "i": "item-1", "k": "wishlist", "t": 1.0})),
    ]
    producer = RecordProducer(kafka_config)
    for key, value in sent:
        producer.send_raw(kafka_config.events_topic, key, value)
    producer.send_event(valid)
    producer.flush()
    consumer = EventConsumer(kafka_config)
    sink = DeadLetterSink(producer, clock=lambda: 1_800_000_000.0)
    try:
        records = consume(consumer, 4)
        for record in records:
            decoded = decode_event(record.value)
            if isinstance(decoded, BadEvent):
                sink.send(record, decoded)
        sink.flush()
    finally:
        consumer.close()
    dlq_consumer = EventConsumer(kafka_config, topic=kafka_config.dlq_topic)
    try:
        letters = [decode_dead_letter(r.value) for r in consume(dlq_consumer, 3)]
    finally:
        dlq_consumer.close()
        producer.close()
    expected_reasons = [BadReason.NOT_MSGPACK, BadReason.WRONG_SCHEMA_VERSION, BadReason.UNKNOWN_KIND]
    assert [letter.reason for letter in letters] == expected_reasons
    assert [(letter.key, letter.value) for letter in letters] == sent
    assert [(x.topic, x.partition, x.offset) for x in letters] == [
        (r.topic, r.partition, r.offset) for r in records[:3]
    ]
    assert {letter.dead_lettered_at for letter in letters} == {1_800_000_000.0}
    assert sink.counts == {reason: 1 for reason in expected_reasons}
