"""The updater loop: records -> events -> session windows -> pairs -> SGNS on the shards -> snapshots.

One poll is one unit of work: decode every record (a bad one is dead-lettered with its reason),
window and pair the good ones, train everything pending, make the dead letters durable, and only
then commit the poll's offsets, so a committed offset always means "applied to the shards or
dead-lettered". A poll that fails half way (a shard actor died) leaves the updater failed: nothing of
it is committed, not even on close, and the caller rebuilds it from the last checkpoint.

Checkpoints (with a ``Checkpointer``): between two polls, every ``checkpoint.interval_s``, the whole
state (shards, learner, cold start, totals) is captured with the offsets it covers and written in the
background. ``resume`` restores one and makes the consumer read on from its offsets, so each record
is applied once to the state that survives a crash (README, "Delivery guarantee").

Backpressure: the loop is synchronous, so nothing buffers beyond one poll (``kafka.max_poll_records``)
and kafka-python's bounded fetch buffer; when the shards are slow, polling slows with them and the
backlog stays in Kafka, where it belongs. Partitions are not paused: a snapshot is exported between
two polls (a consistent cut) and written on a background thread from its own copy, so nothing would
be gained by stopping fetches while it is written, and ``kafka.max_poll_interval_ms`` is sized so a
slow batch never looks like a dead member to the group.

Cold start (when a ``ColdStart`` and an items source are given): every step first reads what the
compacted ``items`` topic has for it (no group, no commits: the metadata is rebuilt from the topic's
beginning at each start; bad records are dead-lettered with their reason) into ``ColdStart.metadata``.
Each trained batch offers its pairs to the tower's reservoir, and the tower trains within its budget
of pairs per event after each poll, pulling the learned rows it aligns to from the shards only when a
step is due. Each snapshot then gets a content-only row for every item with metadata and no learned
row, low-count rows blended with their content vector, the ``cold`` flags, the content vectors, and
the new-item share and cold temperature the query API mixes with. The tower's weights, Adam moments
and reservoir are in checkpoints; the metadata is re-read from the topic at each start. The cold
softmax's temperature is fitted at each snapshot on the sessions that went on to a never-seen item
since the last one (``ColdStart.calibrate_on_content``).

Rebalances: several updaters may share the partitions as one consumer group, over shared shards
(README, "Running several updaters"). The consumer calls ``revoke`` (inside ``poll()`` or ``close()``,
between two steps) before partitions are taken away; it trains what is pending, waits for the
pushes, flushes dead letters, writes each partition's open sessions with the offset they are valid
at to the hand-off store (handoff.py), and returns the processed but uncommitted offsets for the
consumer to commit. When partitions are assigned, ``assign`` learns the offset each resumes from
and adopts the stored sessions when they are valid exactly there; otherwise (the previous owner
crashed, or its commit failed) the partition's sessions start afresh, counted in
``recsim_partition_handoffs_total{outcome="afresh"}``. A partition whose sessions came with the
restored checkpoint keeps them (a single updater's restart). Without a hand-off store, revoked
sessions are dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recsim_stream.checkpoint import Checkpoint, CheckpointError
from recsim_stream.checkpointer import Checkpointer
from recsim_stream.cold_start import ColdStart, ServedRows
from recsim_stream.config import Config
from recsim_stream.events import BadEvent, ItemMeta, decode_event, decode_item
from recsim_stream.handoff import Handoff, HandoffStore, Outcome, decide, session_keys
from recsim_stream.kafka_io import BrokerUnavailable, CommitRefused, RevokeHandler
from recsim_stream.learner import Learner
from recsim_stream.metrics import UpdaterMetrics
from recsim_stream.reshard import fit_shard_count
from recsim_stream.scoring import SESSION_ITEMS
from recsim_stream.sessions import Arrival
from recsim_stream.shard import ShardExport
from recsim_stream.snapshot import SnapshotArrays
from recsim_stream.snapshotter import DeferredArrays, Snapshotter
from recsim_stream.trainer import PullFn

log = logging.getLogger(__name__)

LOSS_SMOOTHING = 0.05  # weight of the newest batch in the loss moving average
EXPIRY_STEPS = 64  # expiry runs once event time has moved 1/EXPIRY_STEPS of learn.expire_after_s
ITEMS_CATCH_UP_POLL_MS = 200  # poll timeout while loading the items topic at start
# After a restore, snapshots wait until the replay has passed what the last published snapshot
# covered (the API keeps serving that one), but no longer than this.
PUBLISH_HOLD_MAX_S = 120.0
STATE_VERSION = 1  # of the checkpoint state tree below


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    timestamp: int  # Kafka's record timestamp, milliseconds (the producer's send time by default)
    key: bytes | None
    value: bytes | None


Partition = tuple[str, int]  # (topic, partition)


class Source(Protocol):
    def poll(self) -> Sequence[Record]: ...
    def commit(self, next_offsets: dict[Partition, int]) -> None: ...
    def lag(self) -> dict[Partition, int]: ...
    def set_revoke_handler(self, handler: RevokeHandler) -> None: ...
    def start_from(self, next_offsets: Mapping[Partition, int]) -> None: ...


class ItemSource(Protocol):
    def poll(self, timeout_ms: int = 0) -> Sequence[Record]: ...
    def caught_up(self) -> bool: ...


class DeadLetters(Protocol):
    def send(self, record: Record, bad: BadEvent) -> None: ...
    def flush(self) -> None: ...


class NameExchange(Protocol):
    """Item ids seen by every updater sharing the shards (ray_actors.SharedNames)."""

    def share(self, names: list[str]) -> None: ...
    def fetch(self) -> list[str]: ...


class Shards(Protocol):
    def export(self, since: Sequence[int | None]) -> list[ShardExport]: ...
    def expire(self, now_ts: float) -> np.ndarray: ...
    def removed_since(self, seen: Sequence[int | None] | None) -> tuple[np.ndarray, list[int]]: ...
    def barrier(self) -> object: ...
    def state(self) -> list[dict]: ...
    def restore(self, states: Sequence[dict]) -> None: ...

    pull: PullFn


@dataclass
class Totals:
    records: int = 0
    events: int = 0
    dead_lettered: int = 0
    pairs: int = 0
    loss: float = float("nan")
    items: int = 0  # item metadata records read
    items_dead_lettered: int = 0


class EncodePacer:
    """How long the updater loop may encode newly listed items in this pass: ``share`` of its wall
    time while events flow, spent ``slice_s`` at a time (fewer, larger batches; an event arriving
    meanwhile waits at most about a slice); ``idle_slice_s`` in a pass that polled no event (the
    loop has just waited that long for one: the poll's timeout). Credit is not saved up while
    nothing waits, so a later listing gets no burst."""

    def __init__(self, share: float, slice_s: float, idle_slice_s: float, now: float) -> None:
        self.share, self.slice_s, self.idle_slice_s = share, slice_s, idle_slice_s
        self.credit = 0.0  # seconds of encoding earned and not spent (negative: a slice overran)
        self._at = now

    def allowance(self, now: float, polled: int, waiting: bool) -> float:
        """Seconds to encode now (0: none); ``polled``: events of this pass, ``waiting``: whether
        any listed item waits for its encoding."""
        earned, self._at = self.share * (now - self._at), now
        if not waiting:
            self.credit = 0.0
            return 0.0
        if polled == 0:
            self.credit = self.slice_s
            return max(self.idle_slice_s, self.slice_s)
        self.credit = min(self.slice_s, self.credit + earned)
        return self.slice_s if self.credit >= self.slice_s else 0.0

    def spent(self, seconds: float) -> None:
        """A slice took ``seconds`` (its time earns its share at the next ``allowance``)."""
        self.credit -= seconds


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
        items: ItemSource | None = None,
        cold_start: ColdStart | None = None,
        checkpointer: Checkpointer | None = None,
        handoff: HandoffStore | None = None,
        group_offsets: Callable[[], dict[Partition, int]] | None = None,
        names: NameExchange | None = None,
    ) -> None:
        """``items`` (the ``items`` topic) and ``cold_start`` go together: without them no item is
        served before its first interaction. With a ``checkpointer``, call ``resume`` before the
        first step. ``handoff``: where revoked partitions' sessions go and assigned ones' come from
        (wire ``assign`` to the consumer). ``group_offsets``: the group's committed offsets, which a
        checkpoint records for the partitions other updaters own (their rows are in the shards).
        ``names``: where updaters sharing the shards tell the publisher the item ids they saw."""
        if (items is None) != (cold_start is None):
            raise ValueError("Updater: expected both an items source and a ColdStart, or neither")
        self.config = config
        self.source = source
        self.dead_letters = dead_letters
        self.learner = learner
        self.shards = shards
        self.snapshotter = snapshotter
        self.metrics = metrics
        self.items = items
        self.cold_start = cold_start
        self._tower_cpu_reported = 0.0  # cold_start.training_cpu_s already counted in the metrics
        self._listed_since_snapshot = 0  # item records taken in since the last snapshot (a listing's pace)
        self._encode_pacer = EncodePacer(
            config.content.encode_share,
            config.content.encode_slice_s,
            config.kafka.poll_timeout_ms / 1000.0,
            time.monotonic(),
        )
        self.checkpointer = checkpointer
        self.restored: Checkpoint | None = None
        # Kafka timestamp (s) of the newest record applied: wall-clock freshness for the query API.
        self.newest_record_ts: float | None = None
        self._publish_after: dict[Partition, int] = {}  # see PUBLISH_HOLD_MAX_S
        self._hold_until = 0.0
        self._cold_started: set[str] = set()  # items ever given a content-only row
        self.totals = Totals()
        self.offsets: dict[str, dict[int, int]] = {}  # next offset per topic/partition, committed
        self.processed: dict[Partition, int] = {}  # next offset whose records are all applied
        self.committed: dict[Partition, int] = {}
        self.failed: BaseException | None = None  # set by a poll that failed half way
        self._lag_partitions: set[int] = set()
        self._expired_seen = 0
        self._expired: set[str] = set()  # items whose rows expired since the served rows were taken
        self._expired_at = float("-inf")  # event time of the last expiry
        # An updater that does not snapshot: the shard versions up to which its sampler forgot what
        # the snapshotting one expired, and when to ask again (forget_expired_elsewhere).
        self._expiry_seen: list[int] | None = None
        self._next_expiry_check = 0.0
        self.handoff = handoff
        self.group_offsets = group_offsets
        self.names = names
        self._names_shared = 0  # item ids of learner.items told to the others so far
        self._resumed_at: dict[Partition, int | None] = {}  # where each owned partition was assigned
        self.handoffs: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        source.set_revoke_handler(self.revoke)

    def step(self) -> int:
        """One poll: process, train, commit, maybe snapshot. Returns the number of records."""
        if self.failed is not None:
            raise RuntimeError(
                "the updater failed in an earlier poll and its in-memory state is partial; "
                "restart it from the committed offsets"
            ) from self.failed
        try:
            if self.items is not None:
                self._read_items()
            records = self.source.poll()
            if records:
                self._process(records)
                self._share_names()
            self._commit()
            self._close_sessions()
            self._observe_lag()
            if self.checkpointer is not None and self.checkpointer.due(self.totals.records):
                self.checkpoint()
            self._encode_listed(len(records))
            if self.snapshotter is None:
                self.learner.mark_published()  # nothing waits for a publish of this updater's own
                self.forget_expired_elsewhere()
            elif self.snapshotter.due() and not self._holding_snapshots():
                self.learn_names()
                self.snapshot()
        except BaseException as exc:
            self.failed = exc
            raise
        return len(records)

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """The whole state at this cut (between polls, every push applied), as copies."""
        return {
            "version": STATE_VERSION,
            "dim": self.config.learn.dim,
            "shards": self.shards.state(),
            "learner": self.learner.state(),
            "cold_start": None if self.cold_start is None else self.cold_start.state(),
            "totals": dataclasses.asdict(self.totals),
        }

    def checkpoint(self) -> None:
        """Capture the state now and write it in the background."""
        assert self.checkpointer is not None
        started = time.perf_counter()
        offsets = {**self._others_offsets(), **self.processed}  # fetched before the shards' cut
        state = self.checkpoint_state()
        self.checkpointer.take(offsets, state, self.totals.records, time.perf_counter() - started)

    def _others_offsets(self) -> dict[Partition, int]:
        """Committed offsets of the partitions other updaters own: every record before them is in
        the shards, so a restore re-reads from there (at-least-once for what came after)."""
        if self.group_offsets is None:
            return {}
        try:
            return self.group_offsets()
        except CommitRefused as exc:
            log.warning("checkpoint without the other updaters' offsets: %s", exc)
            return {}

    def check_compatible(self, checkpoint: Checkpoint) -> None:
        """Raise ``CheckpointError`` for a damaged state tree, ``ValueError`` for one this
        configuration cannot continue (another dimension: a wrong setting, not a reason to silently
        start over). Another shard count is fine: ``resume`` re-routes the rows (``reshard``)."""
        state = checkpoint.state
        try:
            version, dim, shards = state["version"], state["dim"], len(state["shards"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {checkpoint.seq}: state lacks {exc}") from exc
        if version != STATE_VERSION:
            raise CheckpointError(
                f"checkpoint {checkpoint.seq}: state version {version!r}, expected {STATE_VERSION}"
            )
        if shards < 1:
            raise CheckpointError(f"checkpoint {checkpoint.seq}: state holds no shard")
        if dim != self.config.learn.dim:
            raise ValueError(
                f"checkpoint {checkpoint.seq} holds rows of dim {dim}; this updater is configured for dim "
                f"{self.config.learn.dim}. Restore with the dim it was made with, or move the checkpoint "
                "folder away to start over (replaying the topic)."
            )

    def resume(
        self, checkpoint: Checkpoint | None, published: Mapping[str, Mapping[int, int]] | None = None
    ) -> None:
        """Start from ``checkpoint`` (None: from nothing, so every partition from its beginning).
        ``published``: offsets the newest published snapshot covers; snapshots wait until the
        replay has passed them, so the API never steps back to an older state."""
        if checkpoint is not None:
            self.check_compatible(checkpoint)
            state = checkpoint.state
            try:
                self.shards.restore(fit_shard_count(state["shards"], self.config.learn.shards))
                self.learner.restore(state["learner"])
                if self.cold_start is not None and state["cold_start"] is not None:
                    self.cold_start.restore(state["cold_start"])
                self.totals = Totals(**state["totals"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise CheckpointError(
                    f"checkpoint {checkpoint.seq}: cannot restore ({type(exc).__name__}: {exc})"
                ) from exc
            self.metrics.state_records.set(self.totals.records)
            self.processed = dict(checkpoint.offsets)
            for (topic, partition), offset in checkpoint.offsets.items():
                self.offsets.setdefault(topic, {})[partition] = offset
            if self.checkpointer is not None:
                self.checkpointer.restored(self.totals.records)
            self.restored = checkpoint
            log.info(
                "resumed from checkpoint %d: %d events, offsets %s",
                checkpoint.seq,
                self.totals.events,
                checkpoint.offsets,
            )
        self.source.start_from({} if checkpoint is None else checkpoint.offsets)
        if published:
            self._publish_after = {
                (topic, int(p)): int(o) for topic, parts in published.items() for p, o in parts.items()
            }
            self._hold_until = time.monotonic() + PUBLISH_HOLD_MAX_S

    def _holding_snapshots(self) -> bool:
        """After a restore: whether the replay is still behind the newest published snapshot."""
        if not self._publish_after:
            return False
        behind = {p: o for p, o in self._publish_after.items() if self.processed.get(p, 0) < o}
        if behind and time.monotonic() < self._hold_until:
            self._publish_after = behind
            return True
        if behind:
            log.warning("replay still behind the last published snapshot at %s; publishing anyway", behind)
        self._publish_after = {}
        return False

    def revoke(self, partitions: set[Partition]) -> dict[Partition, int]:
        """Partitions are being taken away: make their work durable, hand their sessions over,
        return the offsets to commit (processed, not yet committed), and drop their state. Called by
        the consumer inside ``poll()``/``close()``, so never in the middle of a step."""
        healthy = self.failed is None  # a half-processed poll must never be committed or handed over
        if healthy:
            self._train()
            self.shards.barrier()
            self.dead_letters.flush()
            offsets = {
                p: o for p, o in self.processed.items() if p in partitions and self.committed.get(p) != o
            }
        else:
            offsets = {}
        valid_at = {p: self.processed.get(p, self._resumed_at.get(p)) for p in partitions}
        for p in partitions:
            self.processed.pop(p, None)
            self.committed.pop(p, None)
            self._resumed_at.pop(p, None)
            self._publish_after.pop(p, None)  # its replay is its next owner's now
        sessions = self.learner.windows.revoke(sorted({partition for _topic, partition in partitions}))
        if healthy and self.handoff is not None:
            self._hand_over(valid_at, sessions)
        self.metrics.sessions_open.set(self.learner.windows.open_sessions())
        for _topic, partition in partitions:
            if partition in self._lag_partitions:
                self.metrics.consumer_lag.remove(str(partition))
                self._lag_partitions.discard(partition)
        log.info("revoked %s; committing %s", sorted(partitions), offsets)
        return offsets

    def _hand_over(self, valid_at: Mapping[Partition, int | None], sessions: dict) -> None:
        """Write each partition's sessions (durably, before its offset is committed)."""
        assert self.handoff is not None
        rows = {row[0]: row for row in sessions["partitions"]}
        names = self.learner.items.names
        for (topic, partition), offset in sorted(valid_at.items()):
            if offset is None:  # nothing read or committed: nothing to hand over
                continue
            state = {
                "version": sessions["version"],
                "partitions": [rows[partition]] if partition in rows else [],
            }
            keys = session_keys(state)
            self.handoff.write((topic, partition), Handoff(offset, state, {k: names[k] for k in keys}))

    def assign(self, resume_at: Mapping[Partition, int | None]) -> None:
        """Partitions were assigned, each resuming at the offset given (None: from the beginning).
        Called by the consumer inside ``poll()``, before any of their records is returned."""
        windows = self.learner.windows
        # State a restored checkpoint holds for partitions other updaters own now is theirs.
        for p in [p for p in self.processed if p not in resume_at]:
            self.processed.pop(p)
            self.committed.pop(p, None)
            windows.revoke([p[1]])
        for p, offset in sorted(resume_at.items(), key=lambda item: item[0]):
            self._resumed_at[p] = offset
            if windows.watermark(p[1]) is not None:
                continue  # sessions came with the restored checkpoint, valid where start_from seeks
            stored = self.handoff.read(p) if self.handoff is not None else None
            outcome = decide(stored, offset)
            if outcome is Outcome.EXACT:
                assert stored is not None
                try:
                    windows.adopt(stored.sessions)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning(
                        "partition %s: hand-off at %d unusable (%s); sessions start afresh", p, offset, exc
                    )
                    windows.revoke([p[1]])
                    outcome = Outcome.AFRESH
                else:
                    for name in stored.names.values():
                        self.learner.items.key(name)
            self.handoffs[outcome] += 1
            if outcome is not Outcome.NEW:
                self.metrics.partition_handoffs.labels(outcome.value).inc()
            if outcome is Outcome.AFRESH:
                log.warning(
                    "partition %s resumes at %s without a matching hand-off (stored at %s): its open "
                    "sessions start afresh, so no pairs join events before and after this point",
                    p,
                    offset,
                    None if stored is None else stored.offset,
                )
            else:
                log.info("partition %s assigned at %s: %s", p, offset, outcome.value)
        self.metrics.sessions_open.set(windows.open_sessions())

    def _share_names(self) -> None:
        """Tell the other updaters the item ids seen for the first time in this poll."""
        names = self.learner.items.names
        if self.names is None or len(names) == self._names_shared:
            return
        # The id map only grows and keeps insertion order: the new ids are its tail (skipped to in C,
        # without copying the whole catalogue, and only in polls that brought new items).
        self.names.share(list(itertools.islice(names.values(), self._names_shared, None)))
        self._names_shared = len(names)

    def learn_names(self) -> None:
        """Before a snapshot: the item ids other updaters trained rows for, so the rows are named
        (a row whose id arrives later is published with the next full snapshot)."""
        if self.names is None:
            return
        items = self.learner.items
        for name in self.names.fetch():
            items.key(name)
        self._names_shared = len(items.names)  # own ids are shared after each poll: none pending

    def join_running(self, checkpoint: Checkpoint | None) -> None:
        """Start next to updaters already training the shared shards (which this one found running,
        so it must not restore them): take only the item names, sampler counts and content tower of
        ``checkpoint`` (the publisher's newest), and read each partition from the group's committed
        offset. Its totals count from zero: they are this process's own."""
        if checkpoint is None:
            return
        learner = self.learner
        try:
            learner.restore(checkpoint.state["learner"])
            if self.cold_start is not None and checkpoint.state["cold_start"] is not None:
                self.cold_start.restore(checkpoint.state["cold_start"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"checkpoint {checkpoint.seq}: cannot restore ({type(exc).__name__}: {exc})"
            ) from exc
        learner.windows = type(learner.windows)(self.config.sessions)  # sessions come by hand-off
        log.info("joined running shards; item names, sampler and tower from checkpoint %d", checkpoint.seq)

    def _read_items(self) -> None:
        """What the items topic has for this step; until the reader has caught up with the topic
        as it was at start, everything up to there (the catalogue before the first events)."""
        assert self.items is not None
        while True:
            caught_up = self.items.caught_up()
            self._observe_items(self.items.poll(0 if caught_up else ITEMS_CATCH_UP_POLL_MS))
            if caught_up:
                return

    def _observe_items(self, records: Sequence[Record]) -> None:
        """Metadata records into the cold start; a tombstone (compaction's delete) forgets the item."""
        assert self.cold_start is not None
        if not records:
            return
        good: list[ItemMeta] = []
        bad = 0
        for record in records:
            if record.value is None and record.key:
                self.cold_start.forget(record.key.decode("utf-8", "replace"))
                self.metrics.items_deleted.inc()
                continue
            item = decode_item(record.value, self.config.limits)
            if isinstance(item, BadEvent):
                self.dead_letters.send(record, item)
                self.metrics.dead_lettered.labels(item.reason.value).inc()
                bad += 1
            else:
                good.append(item)
        self.cold_start.observe_items(good)
        self._listed_since_snapshot += len(good)
        if bad:
            self.dead_letters.flush()
        self.totals.items += len(records)
        self.totals.items_dead_lettered += bad

    def _process(self, records: Sequence[Record]) -> None:
        learner, limits, cold_start = self.learner, self.config.limits, self.cold_start
        next_offsets: dict[Partition, int] = {}
        bad = 0
        items_before = len(learner.items)
        for record in records:
            event = decode_event(record.value, limits)
            if not isinstance(event, BadEvent):
                new = cold_start is not None and not learner.items.known(event.item_id)
                event = learner.add(event, record.partition)
                if new and not isinstance(event, BadEvent) and not event.repeat:
                    self._record_new_item(event)
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
        if self.cold_start is not None:
            self.cold_start.train_pulling(len(records) - bad, learner.learned_rows)
            self.metrics.content_training_cpu.inc(self.cold_start.training_cpu_s - self._tower_cpu_reported)
            self._tower_cpu_reported = self.cold_start.training_cpu_s
        self.processed.update(next_offsets)
        newest_record = max(record.timestamp for record in records) / 1000.0
        if self.newest_record_ts is None or newest_record > self.newest_record_ts:
            self.newest_record_ts = newest_record
        good = len(records) - bad
        totals, m = self.totals, self.metrics
        totals.records += len(records)
        m.state_records.set(totals.records)
        totals.events += good
        totals.dead_lettered += bad
        m.events_consumed.inc(len(records))
        m.events_trained.inc(good)
        m.items_new.inc(len(learner.items) - items_before)
        m.sampler_items.set(learner.sampler.drawable)

    def _encode_listed(self, polled: int) -> None:
        """Encode newly listed items in the loop's spare time (``EncodePacer``), so that a bulk
        listing is served within the run without holding a snapshot."""
        if self.cold_start is None:
            return
        now = time.monotonic()
        seconds = self._encode_pacer.allowance(now, polled, waiting=self.cold_start.listed_unencoded > 0)
        if seconds > 0:
            self.cold_start.encode_listed(seconds)
            self._encode_pacer.spent(time.monotonic() - now)

    def _record_new_item(self, arrival: Arrival[int]) -> None:
        """A session went on to an item never seen before: evidence for the cold temperature."""
        assert self.cold_start is not None
        names = self.learner.items.names
        prefix = [names[k] for k in arrival.session.items[-SESSION_ITEMS - 1 : -1]]
        self.cold_start.record_new_item(prefix, names[arrival.item])

    def _commit(self) -> None:
        """Commit what is processed and not yet committed (this poll's, or an earlier refused one)."""
        pending = {p: o for p, o in self.processed.items() if self.committed.get(p) != o}
        if not pending:
            return
        try:
            self.source.commit(pending)
        except BrokerUnavailable:
            return  # the consumer logged the outage; the offsets stay pending for a later poll
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
        if self.cold_start is not None and self.cold_start.metadata:
            for batch in self.learner.last_batches:
                self.cold_start.remember_pairs(batch.centers, batch.contexts, self.learner.items.names)
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
        started = time.perf_counter()
        coming = 0 if self.cold_start is None else self.cold_start.listed_unencoded
        listed, self._listed_since_snapshot = self._listed_since_snapshot, 0
        self.expire()
        since = self.snapshotter.since(coming, listed)
        kind = "full" if all(version is None for version in since) else "delta"
        exports = self.shards.export(since)
        names = self.learner.items.names
        newest = self.learner.newest_ts if np.isfinite(self.learner.newest_ts) else None
        cold_start = self.cold_start
        if cold_start is not None:
            cold_start.calibrate_on_content()  # cold as of the last publish
        self.snapshotter.take(
            exports,
            lambda keys: [names.get(k) for k in keys.tolist()],
            set(),
            self.offsets,
            newest,
            complete=self.complete_rows,
            newest_record_ts=self.newest_record_ts,
            excluded=() if cold_start is None else cold_start.deleted,
            scoring=None
            if cold_start is None
            else {
                "new_item_share": self.learner.new_items.value,
                "new_item_share_after_cold": self.learner.new_items_after_cold.value,
                "cold_temperature": cold_start.temperature.value,
            },
        )
        self.learner.mark_published()
        paused = time.perf_counter() - started
        self.snapshotter.metrics.pause_seconds.labels(kind).observe(paused)
        if kind == "full":
            log.info("snapshot: a full export held the loop for %.2f s", paused)

    def expire(self) -> None:
        """Drop the rows no positive pair has touched for ``learn.expire_after_s`` of event time
        (the newest event's) from the shards, and their items from the sampler; the next snapshot
        stops serving them, or serves a listed one by its content again. Only the snapshotting
        updater expires; the others learn what it dropped from the shards (forget_expired_elsewhere)."""
        newest, window = self.learner.newest_ts, self.config.learn.expire_after_s
        # Expiring is a round trip to every shard and a scan of its rows: done once event time has
        # moved a 64th of the window since the last time (a 30-day window: every 11 hours).
        if window <= 0 or not np.isfinite(newest) or newest - self._expired_at < window / EXPIRY_STEPS:
            return
        self._expired_at = newest
        keys = self.shards.expire(newest)
        if not len(keys):
            return
        self._expired.update(self.learner.expired(keys))
        assert self.snapshotter is not None  # called by snapshot()
        self.snapshotter.expired(keys)
        log.debug(
            "expiry: %d rows untouched for %.0f s before event time %.0f left the shards",
            len(keys),
            self.config.learn.expire_after_s,
            newest,
        )

    def forget_expired_elsewhere(self) -> None:
        """An updater that does not snapshot does not expire: every ``snapshot.interval_s`` it asks
        the shards what the snapshotting one expired, and its sampler forgets those items, or its
        draws would recreate their rows (never served, expiring again)."""
        if self.config.learn.expire_after_s <= 0 or time.monotonic() < self._next_expiry_check:
            return
        self._next_expiry_check = time.monotonic() + self.config.snapshot.interval_s
        keys, self._expiry_seen = self.shards.removed_since(self._expiry_seen)
        self.learner.sampler.forget(keys)

    def complete_rows(self, arrays: SnapshotArrays, full: bool) -> SnapshotArrays | DeferredArrays:
        """The shards' rows as served: plus a content-only row for each item with metadata and no
        learned row (in a delta, only those whose content vector changed since the last snapshot,
        so a delta costs what changed, not the catalogue), low-count rows blended with content, cold
        flags and content vectors. A learned row's content vector is refreshed when the row is next
        exported: between full snapshots it may be a few tower steps old. A full snapshot's tables
        are left for its build thread to assemble (``cold_start.ServedRowsPlan``).

        A delta also removes the items deleted from the catalogue since the last snapshot
        (``SnapshotArrays.removed_ids``; ``snapshot`` left their rows out of the export's) and those
        whose rows expired, unless it serves them again (a listed one, by its content)."""
        expired, self._expired = self._expired, set()
        removed = expired if self.cold_start is None else expired | self.cold_start.take_removed()
        if self.cold_start is not None:
            self.cold_start.lost_learned(removed)
            self.cold_start.unlearn(expired)
        served = self._served_rows(arrays, full)
        if full or not removed:
            return served
        assert isinstance(served, SnapshotArrays)
        gone = removed - set(served.ids.tolist())
        if not gone:
            return served
        return dataclasses.replace(served, removed_ids=np.array(sorted(gone), dtype=str))

    def _served_rows(self, arrays: SnapshotArrays, full: bool) -> SnapshotArrays | DeferredArrays:
        if self.cold_start is None:
            return arrays
        self.cold_start.published_learned(arrays.ids[arrays.counts > 0].tolist(), full)
        if not self.cold_start.metadata:
            return arrays
        plan = self.cold_start.plan(
            arrays.ids.tolist(),
            arrays.input_vectors,
            arrays.output_vectors,
            arrays.counts,
            # a full snapshot has every learned row
            learned_elsewhere=() if full else self.cold_start.learned,
            changed_only=not full,
            encode_limit=0,  # newly listed items are encoded in the loop's spare time (_encode_listed)
        )
        started = [i for i in plan.ids[arrays.count :] if i not in self._cold_started]
        self._cold_started.update(started)
        self.metrics.items_cold_started.inc(len(started))
        if full:
            return DeferredArrays(plan.count, lambda: _served_arrays(plan.assemble()))
        return _served_arrays(plan.assemble())

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


def _served_arrays(rows: ServedRows) -> SnapshotArrays:
    return SnapshotArrays(
        ids=np.array(rows.ids, dtype=str).reshape(-1),
        input_vectors=rows.inputs.astype(np.float32, copy=False),
        output_vectors=rows.outputs.astype(np.float32, copy=False),
        counts=rows.counts.astype(np.int64, copy=False),
        cold=rows.cold,
        content_vectors=rows.content.astype(np.float32, copy=False),
    )
