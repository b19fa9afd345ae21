"""``recsim-stream train``: the updater service.

Wiring only: a Kafka consumer group on ``events``, a reader of the whole ``items`` topic feeding the
cold start (when ``content.enabled``), a dead-letter producer, the parameter-server
shards as Ray actors, the learner, and the snapshotter writing to the snapshot folder that the query
API watches. SIGINT/SIGTERM stop it after the poll in progress (its offsets committed). If a poll
fails (a shard actor died), the process exits with that error and nothing of the poll is committed:
restarting resumes from the last committed offsets.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import ray

from recsim_stream.cold_start import ColdStart
from recsim_stream.config import add_config_arguments, load_config
from recsim_stream.kafka_io import DeadLetterSink, EventConsumer, ItemsReader, RecordProducer, ensure_topics
from recsim_stream.learner import Learner
from recsim_stream.metrics import SnapshotMetrics, UpdaterMetrics, new_registry, serve_metrics
from recsim_stream.ray_actors import RayShards, init_ray
from recsim_stream.snapshot import SnapshotStore
from recsim_stream.snapshotter import Snapshotter
from recsim_stream.updater import Totals, Updater

SECTIONS = ["learn", "kafka", "sessions", "pairs", "snapshot", "ray", "limits", "metrics", "content"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-seconds", type=float, default=0.0, help="stop after this long (0 = run until stopped)"
    )
    parser.add_argument(
        "--idle-exit-s",
        type=float,
        default=0.0,
        help="stop once no record arrived for this long (0 = never); for benchmarks and batch runs",
    )
    add_config_arguments(parser, SECTIONS, primary="learn")


class _Reporter:
    """One progress line every few seconds: events/s, pairs/s, loss, items, dead letters, snapshots."""

    def __init__(self, updater: Updater, shards: RayShards, snapshotter: Snapshotter) -> None:
        self.updater, self.shards, self.snapshotter = updater, shards, snapshotter
        self.started = self.last_t = time.monotonic()
        self.last = Totals()

    def __call__(self, totals: Totals) -> None:
        now = time.monotonic()
        dt = max(now - self.last_t, 1e-9)
        print(
            f"train: {totals.events:,} events ({(totals.events - self.last.events) / dt:,.0f}/s)  "
            f"pairs {(totals.pairs - self.last.pairs) / dt:,.0f}/s  loss {totals.loss:.3f}  "
            f"items {len(self.updater.learner.items):,}  dead-lettered {totals.dead_lettered:,}  "
            f"lag {sum(self.updater.source.lag().values()):,}  snapshots {self.snapshotter.published}",
            file=sys.stderr,
            flush=True,
        )
        self.updater.observe_shards(self.shards.stats())
        self.last, self.last_t = Totals(**vars(totals)), now


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    registry = new_registry()
    metrics = UpdaterMetrics(registry)
    if config.metrics.port:
        serve_metrics(registry, config.metrics.port, config.metrics.host)
    ensure_topics(config.kafka)
    init_ray(config.ray)
    shards = RayShards(config.learn)
    learner = Learner(config, shards.pull, shards.push)
    producer = RecordProducer(config.kafka)
    consumer = EventConsumer(config.kafka)
    snapshotter = Snapshotter(
        config.snapshot, SnapshotStore(config.snapshot), SnapshotMetrics(registry), config.learn.shards
    )
    items = ItemsReader(config.kafka) if config.content.enabled else None
    cold_start = (
        ColdStart(config.content, config.learn.dim, config.learn.torch_threads) if items is not None else None
    )
    updater = Updater(
        config, consumer, DeadLetterSink(producer), learner, shards, snapshotter, metrics, items, cold_start
    )

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    reporter = _Reporter(updater, shards, snapshotter)
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else float("inf")
    last_record = time.monotonic()
    first_poll: float | None = None  # start of the first poll that returned records
    print(
        f"train: consuming {config.kafka.events_topic} on {config.kafka.bootstrap} as group "
        f"{config.kafka.group_id!r}; {config.learn.shards} shards; snapshots in {config.snapshot.dir}",
        file=sys.stderr,
        flush=True,
    )
    try:
        next_report = time.monotonic() + 5.0
        while not stop.is_set() and time.monotonic() < deadline:
            polled_at = time.monotonic()
            if updater.step():
                last_record = time.monotonic()
                first_poll = polled_at if first_poll is None else first_poll
            elif args.idle_exit_s and time.monotonic() - last_record >= args.idle_exit_s:
                break
            if time.monotonic() >= next_report:
                reporter(updater.totals)
                next_report += 5.0
        snapshotter.wait()
        if updater.totals.events:
            updater.snapshot()  # the final state, so a restart's API serves everything trained
            snapshotter.wait()
        reporter(updater.totals)
        t = updater.totals
        elapsed = time.monotonic() - reporter.started
        busy = last_record - first_poll if first_poll is not None else 0.0
        rate = f"{t.records / busy:,.0f} records/s, {t.pairs / busy:,.0f} pairs/s" if busy > 0 else "-"
        print(
            f"train: done: {t.events:,} events, {t.pairs:,} pairs, {t.dead_lettered:,} dead-lettered in "
            f"{elapsed:.1f} s; from first to last record {busy:.2f} s: {rate}",
            file=sys.stderr,
        )
    finally:
        consumer.close()
        if items is not None:
            items.close()
        producer.close()
        ray.shutdown()
    return 0
