"""The updater loop: records -> events -> session windows -> pairs -> SGNS on the shards -> snapshots.

One poll is one unit of work: decode every record (a bad one is dead-lettered with its reason),
window and pair the good ones, train everything pending, make the dead letters durable, and only
then commit the poll's offsets, so a committed offset always means "applied to the shards or
dead-lettered" (at-least-once: a crash before the commit replays the poll). A poll that fails half
way (a shard actor died) leaves the updater failed: nothing of it is committed, not even on close,
and the process must restart from the committed offsets.

Backpressure: the loop is synchronous, so nothing buffers beyond one poll (``kafka.max_poll_records``)
and kafka-python's bounded fetch buffer; when the shards are slow, polling slows with them and the
backlog stays in Kafka, where it belongs. Partitions are not paused: a snapshot is exported between
two polls (a consistent cut) and written on a background thread from its own copy, so nothing would
be gained by stopping fetches while it is written, and ``kafka.max_poll_interval_ms`` is sized so a
slow batch never looks like a dead member to the group.

Rebalances: the consumer calls ``revoke`` (inside ``poll()`` or ``close()``, between two steps)
before partitions are taken away; it trains what is pending, flushes dead letters, returns the
processed but uncommitted offsets of those partitions for the consumer to commit, and drops their
open sessions. Sessions are not handed over yet: the new owner starts them afresh (a checkpoint
hand-off comes with checkpoints).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recsim_stream.config import Config
from recsim_stream.events import BadEvent, decode_event
from recsim_stream.kafka_io import CommitRefused, RevokeHandler
from recsim_stream.learner import Learner
from recsim_stream.metrics import UpdaterMetrics
from recsim_stream.shard import ShardExport
from recsim_stream.snapshotter import Snapshotter

log = logging.getLogger(__name__)

LOSS_SMOOTHING = 0.05  # weight of the newest batch in the loss moving average


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


Partition = tuple[str, int]  # (topic, partition)


class Source(Protocol):
    def poll(self) -> Sequence[Record]: ...
    def commit(self, next_offsets: dict[Partition, int]) -> None: ...
    def lag(self) -> dict[Partition, int]: ...
    def set_revoke_handler(self, handler: RevokeHandler) -> None: ...


class DeadLetters(Protocol):
    def send(self, record: Record, bad: BadEvent) -> None: ...
    def flush(self) -> None: ...


class Shards(Protocol):
    def export(self, since: Sequence[int | None]) -> list[ShardExport]: ...
    def barrier(self) -> object: ...


@dataclass
class Totals:
    records: int = 0
    events: int = 0
    dead_lettered: int = 0
    pairs: int = 0
    loss: float = float("nan")


class Updater:
    def __init__(
        self,
        config: Config,
        source: Source,
        dead_letters: DeadLetters,
        learner: Learner,
        shards: Shards,
        snapshotter: Snapshotter | None,
        metrics: UpdaterMetrics,
        cold_keys: Callable[[], set[int]] = set,
    ) -> None:
        self.config = config
        self.source = source
        self.dead_letters = dead_letters
        self.learner = learner
        self.shards = shards
        self.snapshotter = snapshotter
        self.metrics = metrics
        self._cold_keys = cold_keys
        self.totals = Totals()
        self.offsets: dict[str, dict[int, int]] = {}  # next offset per topic/partition, committed
        self.processed: dict[Partition, int] = {}  # next offset whose records are all applied
        self.committed: dict[Partition, int] = {}
        self.failed: BaseException | None = None  # set by a poll that failed half way
        self._lag_partitions: set[int] = set()
        self._expired_seen = 0
        metrics.paused.set(0)  # partitions are never paused (see the module docstring)
        source.set_revoke_handler(self.revoke)

    def step(self) -> int:
        """One poll: process, train, commit, maybe snapshot. Returns the number of records."""
        if self.failed is not None:
            raise RuntimeError(
                "the updater failed in an earlier poll and its in-memory state is partial; "
                "restart it from the committed offsets"
            ) from self.failed
        try:
            records = self.source.poll()
            if records:
                self._process(records)
            self._commit()
            self._close_sessions()
            self._observe_lag()
            if self.snapshotter is not None and self.snapshotter.due():
                self.snapshot()
        except BaseException as exc:
            self.failed = exc
            raise
        return len(records)

    def revoke(self, partitions: set[Partition]) -> dict[Partition, int]:
        """Partitions are being taken away: make their work durable, return the offsets to commit
        (processed, not yet committed), and drop their state. Called by the consumer inside
        ``poll()``/``close()``, so never in the middle of a step.

        Open sessions of these partitions are dropped, not handed over: the next owner starts them
        afresh. Handing them over through checkpoints comes in a later issue.
        """
        if self.failed is None:
            self._train()
            self.dead_letters.flush()
            offsets = {
                p: o for p, o in self.processed.items() if p in partitions and self.committed.get(p) != o
            }
        else:  # a half-processed poll must never be committed
            offsets = {}
        for p in partitions:
            self.processed.pop(p, None)
            self.committed.pop(p, None)
        self.learner.windows.revoke(sorted({partition for _topic, partition in partitions}))
        self.metrics.sessions_open.set(self.learner.windows.open_sessions())
        for _topic, partition in partitions:
            if partition in self._lag_partitions:
                self.metrics.consumer_lag.remove(str(partition))
                self._lag_partitions.discard(partition)
        log.info("revoked %s; committing %s", sorted(partitions), offsets)
        return offsets

    def _process(self, records: Sequence[Record]) -> None:
        learner, limits = self.learner, self.config.limits
        next_offsets: dict[Partition, int] = {}
        bad = 0
        items_before = len(learner.items)
        for record in records:
            event = decode_event(record.value, limits)
            if not isinstance(event, BadEvent):
                event = learner.add(event, record.partition)
            if isinstance(event, BadEvent):
                self.dead_letters.send(record, event)
                self.metrics.dead_lettered.labels(event.reason.value).inc()
                bad += 1
            elif learner.ready():
                self._train()
            next_offsets[(record.topic, record.partition)] = record.offset + 1
        self._train()
        self.shards.barrier()  # every push applied before the offsets can be committed
        self.dead_letters.flush()  # a dead letter must be durable before its offset is committed
        self.processed.update(next_offsets)
        good = len(records) - bad
        totals = self.totals
        totals.records += len(records)
        totals.events += good
        totals.dead_lettered += bad
        m = self.metrics
        m.events_consumed.inc(len(records))
        m.events_trained.inc(good)
        m.items_new.inc(len(learner.items) - items_before)
        m.sampler_items.set(learner.sampler.size)

    def _commit(self) -> None:
        """Commit what is processed and not yet committed (this poll's, or an earlier refused one)."""
        pending = {p: o for p, o in self.processed.items() if self.committed.get(p) != o}
        if not pending:
            return
        try:
            self.source.commit(pending)
        except CommitRefused as exc:
            # The group moved on; the next poll rejoins and the revoke (or lost) callback settles
            # these partitions. At worst their next owner re-reads this poll: at-least-once.
            log.warning("%s; retrying with the next poll", exc)
            return
        self.committed.update(pending)
        for (topic, partition), offset in pending.items():
            self.offsets.setdefault(topic, {})[partition] = offset

    def _observe_lag(self) -> None:
        for (_topic, partition), lag in self.source.lag().items():
            self.metrics.consumer_lag.labels(str(partition)).set(lag)
            self._lag_partitions.add(partition)

    def _train(self) -> None:
        if not len(self.learner.pairs):
            return
        started = time.perf_counter()
        result = self.learner.train()
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.pairs_trained.inc(result.pairs)
        totals = self.totals
        totals.pairs += result.pairs
        totals.loss = (
            result.loss
            if np.isnan(totals.loss)
            else totals.loss + LOSS_SMOOTHING * (result.loss - totals.loss)
        )
        self.metrics.loss.set(totals.loss)

    def _close_sessions(self) -> None:
        closed = self.learner.windows.advance()
        if closed:
            self.metrics.sessions_closed.inc(len(closed))
        self.metrics.sessions_open.set(self.learner.windows.open_sessions())

    def snapshot(self) -> None:
        """Export every shard now (a consistent cut: the loop is between batches) and publish it."""
        assert self.snapshotter is not None
        exports = self.shards.export(self.snapshotter.since())
        names = self.learner.items.names
        newest = self.learner.newest_ts if np.isfinite(self.learner.newest_ts) else None
        self.snapshotter.take(
            exports,
            lambda keys: [names.get(k) for k in keys.tolist()],
            self._cold_keys(),
            self.offsets,
            newest,
        )

    def observe_shards(self, stats: Sequence[dict]) -> None:
        """Per-shard figures (``ParameterShard.stats()``) into the metrics."""
        expired = 0
        for shard in stats:
            self.metrics.shard_rows.labels(str(shard["shard"])).set(shard["rows"])
            self.metrics.shard_table_bytes.labels(str(shard["shard"])).set(shard["table_bytes"])
            expired += shard["expired_total"]
        self.metrics.rows_expired.inc(max(0, expired - self._expired_seen))
        self._expired_seen = max(self._expired_seen, expired)

    def run(
        self,
        stop: threading.Event,
        report: Callable[[Totals], None] = lambda _t: None,
        report_every_s: float = 5.0,
    ) -> None:
        """Loop until ``stop`` is set; ``report`` is called every ``report_every_s`` seconds."""
        next_report = time.monotonic() + report_every_s
        while not stop.is_set():
            self.step()
            if time.monotonic() >= next_report:
                report(self.totals)
                next_report += report_every_s
