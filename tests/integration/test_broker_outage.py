"""A broker outage mid-stream, on a broker of this test's own (it is stopped and restarted on the same
port and data): the simulator's publishing and the updater (real Ray shards) ride it out and every
event the simulator produced is trained or dead-lettered, once.

Prints one line of figures (run with ``-s``): how long after the broker was back the updater trained
again, and events lost and duplicated; RELIABILITY.md quotes it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from recsim_stream.config import Config, KafkaConfig, LearnConfig, SimConfig, SnapshotConfig
from recsim_stream.kafka_io import (
    ConsumerRecord,
    DeadLetterSink,
    EventConsumer,
    RecordProducer,
    RevokeHandler,
    ensure_topics,
)
from recsim_stream.learner import Learner
from recsim_stream.local_broker import LocalBroker, restartable_broker
from recsim_stream.metrics import (
    KafkaMetrics,
    SimulatorMetrics,
    SnapshotMetrics,
    UpdaterMetrics,
    new_registry,
)
from recsim_stream.pacing import RateLimiter
from recsim_stream.progress import Progress
from recsim_stream.ray_actors import RayShards
from recsim_stream.sim import Simulator
from recsim_stream.snapshot import SnapshotStore
from recsim_stream.snapshotter import Snapshotter
from recsim_stream.updater import Updater
from services.publishing import PublishReport, publish

pytestmark = pytest.mark.integration

START_TS = 1_700_000_000.0
EVENTS = 24_000
RATE = 1_500.0  # events per second: 16 s of publishing, the outage in the middle of it
STOP_AFTER = 4_000  # records the updater has consumed when the broker is stopped
STOPPED_S = 6.0  # how long the broker stays down after its controlled shutdown
LEARN = LearnConfig(dim=16, shards=2, batch_pairs=4096)
SIM = SimConfig(
    seed=5, events=EVENTS, rate=RATE, items=300, clusters=10, users=500,
    new_items_per_1k_events=0, drift_per_1k_events=0,
)  # fmt: skip


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """Never the session broker: this one is stopped mid-test."""
    with restartable_broker(tmp_path / "kafka") as broker:
        yield broker


class Recording:
    """The real consumer, passed through, remembering the (partition, offset) of every record polled."""

    def __init__(self, consumer: EventConsumer) -> None:
        self.consumer = consumer
        self.keys: Counter[tuple[int, int]] = Counter()

    def poll(self) -> list[ConsumerRecord]:
        records = self.consumer.poll()
        self.keys.update((r.partition, r.offset) for r in records)
        return records

    def commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        self.consumer.commit(next_offsets)

    def lag(self) -> dict[tuple[str, int], int]:
        return self.consumer.lag()

    def set_revoke_handler(self, handler: RevokeHandler) -> None:
        self.consumer.set_revoke_handler(handler)

    def start_from(self, next_offsets: Mapping[tuple[str, int], int]) -> None:
        self.consumer.start_from(next_offsets)


class Publisher(threading.Thread):
    """The simulator's producing loop (services.publishing.publish, paced), on its own thread."""

    def __init__(self, config: KafkaConfig) -> None:
        super().__init__(name="simulator", daemon=True)
        self.registry = new_registry()
        self.producer = RecordProducer(config, KafkaMetrics(self.registry))
        self.report: PublishReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        limiter = RateLimiter(RATE)
        try:
            self.report = publish(
                Simulator(SIM, START_TS).stream(),
                self.producer,
                Progress("outage test: simulate", total=EVENTS, every_s=3600.0),
                lambda _event: limiter.admit(),
                SimulatorMetrics(self.registry),
            )
        except BaseException as exc:  # the test asserts there was none
            self.error = exc
        finally:
            self.producer.close()


class BrokerRestart(threading.Thread):
    """Stops the broker once ``go`` is set, keeps it down ``STOPPED_S``, starts it again (same port,
    same data). The sleep is the fault's duration, not a synchronisation."""

    def __init__(self, broker: LocalBroker, publisher: Publisher) -> None:
        super().__init__(name="broker-restart", daemon=True)
        self.broker = broker
        self.publisher = publisher
        self.go = threading.Event()
        self.sent_at_stop = 0
        self.back_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        self.go.wait()
        try:
            self.sent_at_stop = sum(self.publisher.producer.sent.values())
            self.broker.stop()
            time.sleep(STOPPED_S)
            self.broker.restart()
            self.back_at = time.monotonic()
        except BaseException as exc:
            self.error = exc


def end_offsets(config: KafkaConfig) -> int:
    """Records in the events topic: what the producer wrote, duplicates included."""
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap, metrics_enabled=False)
    try:
        partitions = [TopicPartition(config.events_topic, p) for p in range(config.partitions)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def events_produced(publisher: Publisher) -> int:
    """What the simulator reports it produced (flush included); 0 if it failed (asserted below)."""
    return 0 if publisher.report is None else publisher.report.events


def connected(registry: CollectorRegistry, client: str) -> float | None:
    return registry.get_sample_value("recsim_kafka_connected", {"client": client})


def test_a_broker_restart_mid_stream_loses_and_duplicates_no_event(
    broker: LocalBroker, ray_cluster: None, tmp_path: Path
) -> None:
    kafka = KafkaConfig.isolated(broker.bootstrap, "outage", max_poll_records=2000)
    ensure_topics(kafka)
    config = Config(
        kafka=kafka,
        learn=LEARN,
        snapshot=SnapshotConfig(dir=str(tmp_path / "snapshots"), interval_s=3600.0),
    )
    registry = new_registry()
    kafka_metrics = KafkaMetrics(registry)
    shards = RayShards(LEARN)
    source = Recording(EventConsumer(kafka, metrics=kafka_metrics))
    dead_letter_producer = RecordProducer(kafka, kafka_metrics)
    snapshotter = Snapshotter(
        config.snapshot, SnapshotStore(config.snapshot), SnapshotMetrics(registry), LEARN.shards
    )
    updater = Updater(
        config,
        source,
        DeadLetterSink(dead_letter_producer),
        Learner(config, shards.pull, shards.push),
        shards,
        snapshotter,
        UpdaterMetrics(registry),
    )
    publisher = Publisher(kafka)
    restart = BrokerRestart(broker, publisher)
    # recsim_kafka_connected of the updater's consumer and of the simulator's producer, repeats dropped
    gauges: dict[str, list[float | None]] = {"events_consumer": [], "producer": []}
    trained_again_at: float | None = None
    try:
        publisher.start()
        restart.start()
        deadline = time.monotonic() + 150
        while publisher.is_alive() or restart.is_alive() or len(source.keys) < events_produced(publisher):
            assert time.monotonic() < deadline, (
                f"expected the stream consumed in 150 s, have {len(source.keys)}"
            )
            polled_at = time.monotonic()
            if updater.step() and restart.back_at is not None and trained_again_at is None:
                trained_again_at = max(polled_at, restart.back_at)
            for client, seen in gauges.items():
                value = connected(registry if client == "events_consumer" else publisher.registry, client)
                if not seen or seen[-1] != value:
                    seen.append(value)
            if updater.totals.records >= STOP_AFTER:
                restart.go.set()
        for _ in range(3):  # anything read twice would come now
            updater.step()
        written = end_offsets(kafka)
    finally:
        source.consumer.close()
        dead_letter_producer.close()
        shards.kill()
    report = publisher.report
    assert report is not None and restart.back_at is not None and trained_again_at is not None
    produced = report.events
    read_twice = sum(count - 1 for count in source.keys.values())
    recovery_s = trained_again_at - restart.back_at
    print(
        f"\nbroker outage: stopped after {restart.sent_at_stop} of {produced} events produced, down "
        f"{source.consumer.health.last_outage_s:.1f} s as the updater saw it; trained again "
        f"{recovery_s:.2f} s after the broker was back; lost {produced - len(source.keys)}, written twice "
        f"{written - produced}, read twice {read_twice}; producer re-sent {sum(publisher.producer.resent.values())}"
    )
    assert (publisher.error, restart.error, updater.failed) == (None, None, None)
    assert 0 < restart.sent_at_stop < produced  # the outage came mid-stream
    assert updater.totals.events + updater.totals.dead_lettered == produced
    assert (len(source.keys), written, read_twice) == (produced, produced, 0)
    assert gauges == {"events_consumer": [1.0, 0.0, 1.0], "producer": [1.0, 0.0, 1.0]}
