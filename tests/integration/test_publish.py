"""The simulator and replay publish into a real broker exactly what they say, keyed as documented."""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict
from pathlib import Path

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.partitioner import DefaultPartitioner

from recsim_stream.config import KafkaConfig, SimConfig
from recsim_stream.datasets import open_dataset
from recsim_stream.events import Event, ItemMeta, decode_event, decode_item
from recsim_stream.kafka_io import RecordProducer, key_partition, read_topic
from recsim_stream.progress import Progress
from recsim_stream.sim import Simulator
from services import replay
from services.publishing import publish

pytestmark = pytest.mark.integration

REES46 = Path("../shared/data/rees46-multicat-oct2019-head/canonical")
REPLAY_EVENTS = 1500


def by_user(records: list[ConsumerRecord]) -> dict[str, list[Event]]:
    events: dict[str, list[Event]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = decode_event(record.value)
        events[event.user_id].append(event)
    return events


def run_simulator(config: KafkaConfig, events: int) -> tuple[list[ItemMeta | Event], Simulator]:
    """Publish ``events`` simulated events (and their item records); return what the simulator yielded."""
    simulator = Simulator(SimConfig(events=events, rate=0, items=300, users=200), start_ts=1_700_000_000.0)
    sent: list[ItemMeta | Event] = []

    def remember(records: object) -> object:
        for record in records:
            sent.append(record)
            yield record

    producer = RecordProducer(config)
    try:
        report = publish(remember(simulator.stream()), producer, Progress("test", out=None))
    finally:
        producer.close()
    assert (report.events, report.items) == (events, len(sent) - events)
    return sent, simulator


def test_simulator_publishes_its_events_keyed_by_user_in_order(kafka_config: KafkaConfig) -> None:
    sent, _ = run_simulator(kafka_config, 3000)
    expected: dict[str, list[Event]] = defaultdict(list)
    for record in sent:
        if isinstance(record, Event):
            expected[record.user_id].append(record)

    records = read_topic(kafka_config, kafka_config.events_topic)

    assert len(records) == 3000
    assert all(r.key == decode_event(r.value).user_id.encode() for r in records)
    assert {user: len({r.partition for r in records if r.key == user.encode()}) for user in expected} == {
        user: 1 for user in expected
    }
    assert by_user(records) == expected


def test_simulator_publishes_every_item_keyed_by_item_id_before_its_first_click(
    kafka_config: KafkaConfig,
) -> None:
    sent, simulator = run_simulator(kafka_config, 3000)
    items = read_topic(kafka_config, kafka_config.items_topic)
    events = read_topic(kafka_config, kafka_config.events_topic)

    published = {r.key.decode(): decode_item(r.value) for r in items}
    assert len(items) == len(published)
    assert published == {r.item_id: r for r in sent if isinstance(r, ItemMeta)}
    listed_ms = {decode_item(r.value).item_id: r.timestamp for r in items}
    first_click_ms: dict[str, int] = {}
    for record in events:
        item_id = decode_event(record.value).item_id
        first_click_ms[item_id] = min(first_click_ms.get(item_id, record.timestamp), record.timestamp)
    new_clicked = [item for item in simulator.truth.new_items if item in first_click_ms]
    assert new_clicked, "expected some new items to be clicked within 3000 events"
    assert set(first_click_ms) <= set(listed_ms)
    assert [item for item in new_clicked if listed_ms[item] > first_click_ms[item]] == []


def test_items_the_simulator_retires_are_tombstoned_after_their_listing(kafka_config: KafkaConfig) -> None:
    config = SimConfig(events=3000, rate=0, items=300, users=200, retired_items_per_1k_events=5.0)
    simulator = Simulator(config, start_ts=1_700_000_000.0)
    producer = RecordProducer(kafka_config)
    try:
        report = publish(simulator.stream(), producer, Progress("test", out=None))
    finally:
        producer.close()
    records = sorted(
        read_topic(kafka_config, kafka_config.items_topic), key=lambda r: (r.partition, r.offset)
    )
    tombstoned = [r.key.decode() for r in records if r.value is None]
    assert len(tombstoned) >= 5 and sorted(tombstoned) == sorted(simulator.truth.retired)
    assert report.items == len(records)
    for item in tombstoned:  # on its key's partition, the listing first
        mine = [r for r in records if r.key == item.encode()]
        assert [r.value is None for r in mine] == [False, True]


def test_keys_land_on_the_partition_kafka_pythons_default_partitioner_picks(
    kafka_config: KafkaConfig,
) -> None:
    producer = RecordProducer(kafka_config)
    users = [f"user-{n}".encode() for n in range(200)] + ["ユーザー".encode(), b""]
    try:
        for user in users:
            producer.send_raw(kafka_config.events_topic, user, b"x")
        producer.flush()
    finally:
        producer.close()
    records = read_topic(kafka_config, kafka_config.events_topic)
    default = DefaultPartitioner()

    def picked(key: bytes) -> int:
        return default.partition(kafka_config.events_topic, key, key, b"x", b"x", _Topics(kafka_config))

    assert {r.key: r.partition for r in records} == {user: picked(user) for user in users}
    assert {user: key_partition(user, 4) for user in users} == {user: picked(user) for user in users}


class _Topics:
    """The three lookups DefaultPartitioner makes of cluster metadata, for a topic of 4 partitions."""

    def __init__(self, config: KafkaConfig) -> None:
        self._topic = config.events_topic

    def topics(self) -> set[str]:
        return {self._topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


@pytest.fixture
def rees46_slice(tmp_path: Path) -> Path:
    """The first ``REPLAY_EVENTS`` events of the REES46 head, with the items they use."""
    if not (REES46 / "events.csv").is_file():
        pytest.skip(f"{REES46} is absent: the shared data sets are not next to the repository")
    lines = (REES46 / "events.csv").read_text(encoding="utf-8").splitlines()[: REPLAY_EVENTS + 1]
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    used = {line.split(",")[2] for line in lines[1:]}
    items = (REES46 / "items.csv").read_text(encoding="utf-8").splitlines()
    kept = [items[0]] + [line for line in items[1:] if line.split(",", 1)[0] in used]
    (tmp_path / "items.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return tmp_path / "events.csv"


def test_replay_publishes_exactly_the_slice_in_order_per_user(
    kafka_config: KafkaConfig, rees46_slice: Path
) -> None:
    dataset = open_dataset(rees46_slice)
    expected: dict[str, list[Event]] = defaultdict(list)
    for event in dataset.events():
        expected[event.user_id].append(event)
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    args = parser.parse_args(
        [
            str(rees46_slice),
            "--speed",
            "0",
            f"--kafka-bootstrap={kafka_config.bootstrap}",
            f"--kafka-events-topic={kafka_config.events_topic}",
            f"--kafka-items-topic={kafka_config.items_topic}",
            f"--kafka-dlq-topic={kafka_config.dlq_topic}",
        ]
    )

    assert replay.run(args) == 0

    events = read_topic(kafka_config, kafka_config.events_topic)
    items = read_topic(kafka_config, kafka_config.items_topic)
    assert len(events) == REPLAY_EVENTS
    assert by_user(events) == expected
    assert sorted(decode_item(r.value).item_id for r in items) == sorted(i.item_id for i in dataset.items())
    assert all(r.key == decode_item(r.value).item_id.encode() for r in items)


def test_replay_of_a_slice_via_publish_counts_items_and_events(
    kafka_config: KafkaConfig, rees46_slice: Path
) -> None:
    dataset = open_dataset(rees46_slice)
    producer = RecordProducer(kafka_config)
    try:
        report = publish(
            itertools.chain(dataset.items(), dataset.events()), producer, Progress("t", out=None)
        )
    finally:
        producer.close()
    assert (report.events, report.items) == (REPLAY_EVENTS, len(dataset.items()))
    assert producer.sent == {
        kafka_config.events_topic: REPLAY_EVENTS,
        kafka_config.items_topic: len(dataset.items()),
    }
    assert producer.failed == {}
