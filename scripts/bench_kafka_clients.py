"""Produce and consume throughput of kafka-python (as recsim-stream uses it) against confluent-kafka,
side by side on one private broker, median of several runs each, interleaved so that both clients see
the same machine load.

    .venv/bin/python scripts/bench_kafka_clients.py [--records 200000] [--runs 3]

Starts its own broker with deploy/kafka/kafka.sh on a free port (data and logs in a temporary
folder), prints progress lines to stderr and a table to stdout, and stops the broker. The records are
simulator events encoded as the updater reads them (msgpack, keyed by user id), on 4 partitions.
confluent-kafka is optional: its rows are skipped when it is not installed (it is not a dependency
of the project; install it into the venv to compare). The load average is printed with every figure:
the machine is shared, so compare rows measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.record import util as record_util

from recsim_stream.config import KafkaConfig, SimConfig
from recsim_stream.events import Event, encode_event
from recsim_stream.kafka_io import RecordProducer, ensure_topics
from recsim_stream.local_broker import private_broker
from recsim_stream.sim import Simulator

PARTITIONS = 4
MAX_POLL_RECORDS = 20_000

# Consumer settings compared for kafka-python; the updater's EventConsumer takes the best.
KAFKA_PYTHON_CONSUMERS: dict[str, dict] = {
    "kafka-python consume (defaults, max_poll_records 20000)": {},
    "kafka-python consume (fetch 4 MiB/partition, 64 MiB/fetch)": {
        "max_partition_fetch_bytes": 4 << 20,
        "fetch_max_bytes": 64 << 20,
    },
    "kafka-python consume (fetch tuned + check_crcs=False)": {
        "max_partition_fetch_bytes": 4 << 20,
        "fetch_max_bytes": 64 << 20,
        "check_crcs": False,
    },
}


def say(message: str) -> None:
    print(f"bench_kafka_clients: {message}", file=sys.stderr, flush=True)


def make_records(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` (user id, encoded event) pairs from the simulator, its item records left out."""
    stream = Simulator(SimConfig(events=n, rate=0), start_ts=1_700_000_000.0).stream()
    return [(r.user_id.encode(), encode_event(r)) for r in stream if isinstance(r, Event)]


def topic_config(bootstrap: str) -> KafkaConfig:
    config = KafkaConfig.isolated(bootstrap, "bench", partitions=PARTITIONS)
    ensure_topics(config)
    return config


def produce_kafka_python(config: KafkaConfig, records: list[tuple[bytes, bytes]]) -> float:
    """The project's RecordProducer (its KafkaConfig producer settings), flush included."""
    producer = RecordProducer(config)
    try:
        started = time.perf_counter()
        for key, value in records:
            producer.send_raw(config.events_topic, key, value)
        producer.flush()
        return time.perf_counter() - started
    finally:
        producer.close()


def produce_confluent(config: KafkaConfig, records: list[tuple[bytes, bytes]]) -> float:
    """librdkafka with the same contract: idempotent, acks=all, keyed by murmur2 like the Java client
    (librdkafka's default partitioner hashes with CRC32 and would place keys elsewhere)."""
    from confluent_kafka import KafkaException, Producer

    failures: list[object] = []

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer(
        {
            "bootstrap.servers": config.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": config.producer_linger_ms,
            "partitioner": "murmur2_random",
            "on_delivery": on_delivery,
        }
    )
    topic = config.events_topic
    started = time.perf_counter()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:  # the local queue is full: serve delivery reports until it has room
                producer.poll(0.05)
    left = producer.flush(60)
    elapsed = time.perf_counter() - started
    if left or failures:
        raise KafkaException(
            f"confluent-kafka: {left} records unflushed, {len(failures)} failed: {failures[:3]}"
        )
    return elapsed


def consume_kafka_python(bootstrap: str, topic: str, expected: int, settings: dict) -> float:
    """Raw KafkaConsumer polls over assigned partitions from the start, until ``expected`` records
    (each record's value is read, as the confluent-kafka loop reads each message's)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_poll_records=MAX_POLL_RECORDS,
        metrics_enabled=False,
        **settings,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        deadline = started + 120
        while seen < expected and time.perf_counter() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=MAX_POLL_RECORDS).values():
                for record in batch:
                    if record.value is not None:
                        seen += 1
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if seen != expected:
        raise RuntimeError(f"kafka-python consumer: expected {expected} records from {topic}, got {seen}")
    return elapsed


def consume_confluent(bootstrap: str, topic: str, expected: int) -> float:
    """librdkafka's consumer, batches of ``MAX_POLL_RECORDS``; each message's error and value are read
    (the updater needs both), as kafka-python's records carry them already."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as CkPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.assign([CkPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        seen = 0
        started = time.perf_counter()
        deadline = started + 120
        while seen < expected and time.perf_counter() < deadline:
            for message in consumer.consume(num_messages=MAX_POLL_RECORDS, timeout=0.5):
                if message.error() is None and message.value() is not None:
                    seen += 1
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if seen != expected:
        raise RuntimeError(f"confluent-kafka consumer: expected {expected} records from {topic}, got {seen}")
    return elapsed


@dataclass
class Row:
    runs: list[tuple[float, float]] = field(default_factory=list)  # (records/s, 1-minute load)

    def add(self, records: int, seconds: float) -> tuple[float, float]:
        run = (records / seconds, os.getloadavg()[0])
        self.runs.append(run)
        return run


def have_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def bench(bootstrap: str, n: int, runs: int) -> dict[str, Row]:
    say(f"encoding {n:,} simulator events")
    records = make_records(n)
    rows: dict[str, Row] = {}
    measure_confluent = have_confluent()
    if not measure_confluent:
        say("confluent-kafka is not installed: its rows are skipped")
    for run in range(1, runs + 1):
        # Both clients consume the topic kafka-python produced in this run: the same records.
        config = topic_config(bootstrap)
        steps: list[tuple[str, Callable[[], float]]] = [
            ("kafka-python produce (RecordProducer)", lambda c=config: produce_kafka_python(c, records))
        ]
        if measure_confluent:
            other = topic_config(bootstrap)
            steps.append(("confluent-kafka produce", lambda c=other: produce_confluent(c, records)))
        for name, settings in KAFKA_PYTHON_CONSUMERS.items():
            steps.append(
                (name, lambda s=settings, c=config: consume_kafka_python(bootstrap, c.events_topic, n, s))
            )
        if measure_confluent:
            steps.append(
                ("confluent-kafka consume", lambda c=config: consume_confluent(bootstrap, c.events_topic, n))
            )
        for name, step in steps:
            rate, load = rows.setdefault(name, Row()).add(n, step())
            say(f"run {run}/{runs}: {name}: {rate:,.0f} records/s (load {load:.2f})")
    return rows


def print_table(rows: dict[str, Row], n: int) -> None:
    crc = "native crc32c" if record_util.crc32c_c is not None else "pure-Python crc32c (pip install crc32c)"
    print(f"\n{n:,} records, {PARTITIONS} partitions, kafka-python with {crc}")
    print(f"{'client and settings':60s} {'median rec/s':>12s}  runs (records/s @ load)")
    for name, row in rows.items():
        median = statistics.median(rate for rate, _ in row.runs)
        runs = ", ".join(f"{rate:,.0f} @ {load:.1f}" for rate, load in row.runs)
        print(f"{name:60s} {median:12,.0f}  {runs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as folder:
        say("starting a broker")
        with private_broker(Path(folder)) as bootstrap:
            rows = bench(bootstrap, args.records, args.runs)
    print_table(rows, args.records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
