"""``recsim-stream train``: the updater service.

Wiring only: a Kafka consumer group on ``events``, a reader of the whole ``items`` topic feeding the
cold start (when ``content.enabled``), a dead-letter producer, the parameter-server shards as Ray
actors, the learner, the snapshotter writing to the folder the query API watches, and the
checkpointer. At start the newest valid checkpoint is restored and the consumer reads on from its
offsets (no checkpoint: every partition from its beginning). SIGINT/SIGTERM stop it after the poll in
progress, with a last checkpoint.

Several updaters (README, "Running several updaters"): with ``ray.address`` set, the shard actors are
named after the consumer group and shared; the updater that creates them restores the checkpoint as
above, the others only take item names and sampler counts from it and read from the group's committed
offsets. Exactly one of them publishes snapshots and writes checkpoints (``snapshot.enabled``), naming
the rows with the item ids all of them share through a Ray actor; all of them hand open sessions over
through ``checkpoint.dir/partitions`` on rebalances, so that folder must be shared. A shard actor that dies is recovered in process: every part is
rebuilt, restored from the last checkpoint, and the consumer rewinds to its offsets. Any other
failure ends the process; restarting it resumes the same way.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass

import ray
from prometheus_client import CollectorRegistry

from recsim_stream.checkpoint import CheckpointStore
from recsim_stream.checkpointer import Checkpointer
from recsim_stream.cold_start import ColdStart
from recsim_stream.config import Config, add_config_arguments, load_config
from recsim_stream.gc_tuning import settle_heap
from recsim_stream.handoff import HandoffStore
from recsim_stream.kafka_io import DeadLetterSink, EventConsumer, ItemsReader, RecordProducer, ensure_topics
from recsim_stream.learner import Learner
from recsim_stream.metrics import (
    CheckpointMetrics,
    KafkaMetrics,
    SnapshotMetrics,
    UpdaterMetrics,
    new_registry,
    serve_metrics,
)
from recsim_stream.ray_actors import RayShards, SharedNames, init_ray
from recsim_stream.snapshot import SnapshotError, SnapshotStore
from recsim_stream.snapshotter import Snapshotter
from recsim_stream.threads import pin_blas_threads
from recsim_stream.updater import Totals, Updater

SECTIONS = [
    "learn",
    "kafka",
    "sessions",
    "pairs",
    "snapshot",
    "checkpoint",
    "ray",
    "limits",
    "metrics",
    "content",
    "process",
]
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-seconds", type=float, default=0.0, help="stop after this long (0 = run until stopped)"
    )
    parser.add_argument(
        "--idle-exit-s",
        type=float,
        default=0.0,
        help="stop once no record arrived for this long while partitions are assigned (0 = never); "
        "for benchmarks and batch runs",
    )
    add_config_arguments(parser, SECTIONS, primary="learn")


@dataclass
class _Metrics:
    """Metric groups live as long as the process (a registry takes each name once)."""

    updater: UpdaterMetrics
    snapshot: SnapshotMetrics
    checkpoint: CheckpointMetrics
    kafka: KafkaMetrics

    @classmethod
    def on(cls, registry: CollectorRegistry) -> _Metrics:
        return cls(
            UpdaterMetrics(registry),
            SnapshotMetrics(registry),
            CheckpointMetrics(registry),
            KafkaMetrics(registry),
        )


@dataclass
class _Parts:
    """Everything a recovery rebuilds; the producer and the metrics outlive it."""

    updater: Updater
    shards: RayShards
    consumer: EventConsumer
    items: ItemsReader | None
    snapshotter: Snapshotter | None  # None: another updater publishes
    checkpointer: Checkpointer | None

    def close(self, kill_shards: bool = False) -> None:
        if self.snapshotter is not None:
            self.snapshotter.wait()
        if self.checkpointer is not None:
            self.checkpointer.wait()
        self.consumer.close()
        if self.items is not None:
            self.items.close()
        if kill_shards:
            self.shards.kill()


def assemble(config: Config, producer: RecordProducer, metrics: _Metrics) -> _Parts:
    """Build every part and resume from the newest valid checkpoint (or from nothing)."""
    shared = bool(config.ray.address)  # several updaters may train these shards
    publisher = config.snapshot.enabled
    shards = RayShards(config.learn, shared_by=config.kafka.group_id if shared else None, create=publisher)
    learner = Learner(config, shards.pull, shards.push, shards.exchange)
    consumer = EventConsumer(config.kafka, metrics=metrics.kafka)
    snapshots = SnapshotStore(config.snapshot)
    snapshotter = (
        Snapshotter(config.snapshot, snapshots, metrics.snapshot, config.learn.shards, index=config.index)
        if publisher
        else None
    )
    items = ItemsReader(config.kafka, metrics=metrics.kafka) if config.content.enabled else None
    cold_start = (
        ColdStart(config.content, config.learn.dim, config.learn.torch_threads) if items is not None else None
    )
    checkpoints = CheckpointStore(config.checkpoint) if config.checkpoint.enabled else None
    # One checkpoint writer (the publisher): the shards it captures hold every updater's rows.
    checkpointer = (
        Checkpointer(config.checkpoint, checkpoints, metrics.checkpoint)
        if checkpoints and publisher
        else None
    )
    updater = Updater(
        config,
        consumer,
        DeadLetterSink(producer),
        learner,
        shards,
        snapshotter,
        metrics.updater,
        items,
        cold_start,
        checkpointer,
        handoff=HandoffStore(config.checkpoint) if checkpoints else None,
        group_offsets=consumer.committed_offsets if shared else None,
        names=SharedNames(config.kafka.group_id) if shared else None,
    )
    consumer.set_assign_handler(updater.assign)
    if checkpoints is not None:
        if checkpointer is not None:
            checkpoints.remove_stale_temp()
        checkpoint = checkpoints.newest(accept=updater.check_compatible)
        if shards.fresh:
            updater.resume(checkpoint, published=_published_offsets(snapshots) if publisher else None)
        else:
            updater.join_running(checkpoint)
    shards.open()
    return _Parts(updater, shards, consumer, items, snapshotter, checkpointer)


def _published_offsets(store: SnapshotStore) -> dict[str, dict[int, int]] | None:
    try:
        latest = store.latest_version()
        return None if latest is None else dict(store.read_manifest(latest).offsets)
    except SnapshotError as exc:
        log.warning("the newest snapshot is unreadable (%s); publishing without waiting for it", exc)
        return None


class _Reporter:
    """One progress line every few seconds: events/s, pairs/s, loss, items, dead letters, snapshots."""

    def __init__(self) -> None:
        self.started = self.last_t = time.monotonic()
        self.last = Totals()

    def __call__(self, parts: _Parts) -> None:
        now = time.monotonic()
        dt = max(now - self.last_t, 1e-9)
        updater, totals = parts.updater, parts.updater.totals
        checkpoints = f"  checkpoints {parts.checkpointer.written}" if parts.checkpointer else ""
        print(
            f"train: {totals.events:,} events ({max(0, totals.events - self.last.events) / dt:,.0f}/s)  "
            f"pairs {max(0, totals.pairs - self.last.pairs) / dt:,.0f}/s  loss {totals.loss:.3f}  "
            f"items {len(updater.learner.items):,}  dead-lettered {totals.dead_lettered:,}  "
            f"lag {sum(updater.source.lag().values()):,}  "
            f"snapshots {'-' if parts.snapshotter is None else parts.snapshotter.published}{checkpoints}",
            file=sys.stderr,
            flush=True,
        )
        updater.observe_shards(parts.shards.stats())
        self.last, self.last_t = Totals(**vars(totals)), now


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    pin_blas_threads(config.learn.blas_threads)
    registry = new_registry()
    metrics = _Metrics.on(registry)
    if config.metrics.port:
        serve_metrics(registry, config.metrics.port, config.metrics.host)
    ensure_topics(config.kafka)
    init_ray(config.ray)
    producer = RecordProducer(config.kafka, metrics.kafka)
    parts = assemble(config, producer, metrics)
    settle_heap(config.process.gc_threshold)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    reporter = _Reporter()
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else float("inf")
    last_record = time.monotonic()
    first_poll: float | None = None  # start of the first poll that returned records
    restored = parts.updater.restored
    print(
        f"train: consuming {config.kafka.events_topic} on {config.kafka.bootstrap} as group "
        f"{config.kafka.group_id!r}; {config.learn.shards} "
        + (
            f"shared shards ({'created' if parts.shards.fresh else 'found running'}); "
            if config.ray.address
            else "shards; "
        )
        + (
            f"snapshots in {config.snapshot.dir}; "
            if config.snapshot.enabled
            else "snapshots published by another updater; "
        )
        + (
            f"checkpoints in {config.checkpoint.dir}, "
            + (
                f"resumed from {restored.seq} ({parts.updater.totals.events:,} events)"
                if restored
                else "none yet"
            )
            if parts.checkpointer is not None
            else f"session hand-offs in {config.checkpoint.dir} (checkpoints by the publisher)"
            if config.checkpoint.enabled
            else "checkpoints off"
        ),
        file=sys.stderr,
        flush=True,
    )
    try:
        next_report = time.monotonic() + 5.0
        while not stop.is_set() and time.monotonic() < deadline:
            polled_at = time.monotonic()
            try:
                stepped = parts.updater.step()
            except ray.exceptions.RayActorError as exc:
                parts = _recover(config, producer, metrics, parts, exc)
                continue
            if stepped:
                last_record = time.monotonic()
                first_poll = polled_at if first_poll is None else first_poll
            elif args.idle_exit_s:
                if not parts.consumer.assignment():
                    last_record = time.monotonic()  # waiting for partitions is not being idle
                elif time.monotonic() - last_record >= args.idle_exit_s:
                    break
            if time.monotonic() >= next_report:
                reporter(parts)
                next_report += 5.0
        updater = parts.updater
        if parts.snapshotter is not None:
            parts.snapshotter.wait()
            if updater.totals.events:
                updater.learn_names()
                updater.snapshot()  # the final state, so a restart's API serves everything trained
                parts.snapshotter.wait()
        if parts.checkpointer is not None:
            parts.checkpointer.wait()
            if parts.checkpointer.behind(updater.totals.records):
                updater.checkpoint()  # a restart then replays nothing
        reporter(parts)
        t = updater.totals
        elapsed = time.monotonic() - reporter.started
        busy = last_record - first_poll if first_poll is not None else 0.0
        rate = f"{t.records / busy:,.0f} records/s, {t.pairs / busy:,.0f} pairs/s" if busy > 0 else "-"
        print(
            f"train: done: {t.records:,} records: {t.events:,} events, {t.pairs:,} pairs, "
            f"{t.dead_lettered:,} dead-lettered in "
            f"{elapsed:.1f} s; from first to last record {busy:.2f} s: {rate}",
            file=sys.stderr,
        )
    finally:
        parts.close()
        producer.close()
        ray.shutdown()
    return 0


def _recover(
    config: Config, producer: RecordProducer, metrics: _Metrics, parts: _Parts, exc: Exception
) -> _Parts:
    """A shard actor died: the surviving shards are ahead of it, so every part goes back to the last
    checkpoint together, and the consumer re-reads from its offsets. With shared shards only the
    publisher remakes the set from its checkpoint; the other updaters wait for it and join it."""
    started = time.monotonic()
    print(
        f"train: a shard actor failed ({type(exc).__name__}); recovering from the last checkpoint",
        file=sys.stderr,
    )
    parts.close(kill_shards=config.snapshot.enabled or not config.ray.address)
    fresh = assemble(config, producer, metrics)
    metrics.checkpoint.recoveries.labels("shard_actor").inc()
    restored = fresh.updater.restored
    print(
        f"train: recovered in {time.monotonic() - started:.1f} s from "
        + (
            f"checkpoint {restored.seq} ({fresh.updater.totals.events:,} events)"
            if restored
            else "nothing (replaying the topic)"
        ),
        file=sys.stderr,
        flush=True,
    )
    return fresh
