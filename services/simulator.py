"""``recsim-stream simulate``: simulated users, sessions, new items and drift, into Kafka or a CSV."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from recsim_stream.canonical_csv import write_events, write_items
from recsim_stream.config import add_config_arguments, load_config
from recsim_stream.events import Event, ItemMeta
from recsim_stream.kafka_io import RecordProducer, ensure_topics
from recsim_stream.metrics import KafkaMetrics, SimulatorMetrics, new_registry, serve_metrics
from recsim_stream.pacing import RateLimiter
from recsim_stream.progress import Progress
from recsim_stream.sim import Simulator
from services.publishing import publish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON summary on the last line")
    add_config_arguments(parser, ["sim", "kafka", "metrics"], primary="sim")


def _write_csv(simulator: Simulator, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    items: list[ItemMeta] = []

    def events() -> object:
        for record in simulator.stream():
            if isinstance(record, Event):
                yield record
            elif isinstance(record, ItemMeta):  # the canonical CSV has no deletions: retired items stay
                items.append(record)

    n = write_events(out / "events.csv", events())
    write_items(out / "items.csv", items)
    return f"simulate: wrote {n:,} events to {out / 'events.csv'} and {len(items):,} items to {out / 'items.csv'}"


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    sim_config = config.sim
    simulator = Simulator(sim_config, start_ts=time.time())
    if sim_config.out:
        print(_write_csv(simulator, Path(sim_config.out)), file=sys.stderr)
        return 0
    registry = new_registry()
    metrics = SimulatorMetrics(registry)
    if config.metrics.port:
        serve_metrics(registry, config.metrics.port, config.metrics.host)
    ensure_topics(config.kafka)
    producer = RecordProducer(config.kafka, KafkaMetrics(registry))
    limiter = RateLimiter(sim_config.rate)
    progress = Progress("simulate", total=sim_config.events or None)
    deadline = time.monotonic() + sim_config.duration if sim_config.duration else float("inf")
    try:
        report = publish(
            simulator.stream(), producer, progress, lambda _e: limiter.admit(), metrics, deadline
        )
    finally:
        producer.close()
    print(report.line("simulate", config.kafka.bootstrap), file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "events": report.events,
                    "items": report.items,
                    "seconds": report.seconds,
                    "events_per_s": report.events_per_s,
                }
            )
        )
    return 0
