"""From shard exports to published snapshots: deltas every interval, full snapshots with their index.

The caller (the updater) exports every shard at a batch boundary, as ``since()`` says, so the exports
form a consistent cut covering exactly the Kafka offsets it passes to ``take()``. Writing (arrays,
checksums, fsync) happens on one background writer thread; while a write is in flight no new
snapshot is due, so nothing queues up.

A full snapshot of ``index.exact_below`` rows or more needs approximate indexes, which take seconds
to build at 100k rows and minutes at 1M. They are built and gated here once, on a build thread, and
shipped in the snapshot folder, so no query API replica builds them; the same thread then writes the
snapshot's files (``SnapshotStore.prepare``: hundreds of MB, which held every delta back for up to
13 s at 100k when the writer thread wrote them). Meanwhile deltas keep flowing on the current chain,
and their rows are also kept as the *catch-up* of the full snapshot being built. Once its files are
written, the next snapshot publishes the full one (manifest and rename) without pointing LATEST at
it, then a delta with the catch-up rows on top of it, and LATEST at that: a reader never swaps back
to the older cut the index was built over. An index below the recall gate is not published (refused,
reason ``recall``) and the current chain goes on. With no chain to go on (the first snapshot of this
process), the cut is published at once with exact (flat) indexes: slow queries at a large catalogue,
but served in seconds rather than after minutes of building. A large cut on a chain whose base is
small (the catalogue listed after the first snapshot) is first built with exact indexes on the build
thread, so deltas go on meanwhile; its approximate build is due at the next snapshot.

A delta carries the rows whose interaction count moved (and new rows), not those moved only as
negative samples (``snapshot.deltas_skip_negative_only_rows``), which the next full snapshot brings.

A full snapshot is due every ``snapshot.full_every`` snapshots, and sooner once the rows changed since
the last one reach ``snapshot.full_after_changed`` of it: the API searches changed rows exactly. That
one, and the approximate build of an exact full, are due even when nothing else changes.

Otherwise nothing is published when no shard version moved and the cold start added no row. A failed write is
counted and the chain is dropped, so the next snapshot is a full one and serving never depends on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsim_stream.config import IndexConfig, SnapshotConfig
from recsim_stream.index import RecallGateError, build_main_indexes, exact_main_indexes, ship
from recsim_stream.metrics import SnapshotMetrics
from recsim_stream.new_items import serves_new_items
from recsim_stream.shard import ShardExport
from recsim_stream.snapshot import PreparedFiles, SnapshotArrays, SnapshotStore, apply_delta
from recsim_stream.threads import ThreadPriority

log = logging.getLogger(__name__)

LISTING_AHEAD = 5  # snapshots' worth of a flowing listing expected to come (see Snapshotter.since)
LISTING_WAIT = 5  # times snapshot.full_every: the longest a listing holds back a full snapshot

Names = Callable[[np.ndarray], list[str | None]]  # key -> item id (None when unknown here)


@dataclass(frozen=True)
class DeferredArrays:
    """A full snapshot's rows whose tables a build thread assembles, off the caller's loop."""

    count: int
    assemble: Callable[[], SnapshotArrays]


def _assembled(arrays: SnapshotArrays | DeferredArrays) -> SnapshotArrays:
    return arrays.assemble() if isinstance(arrays, DeferredArrays) else arrays


# (rows from the shards, whether they are a full export) -> the rows to publish: the cold start adds
# content-only rows and blends low-count ones (Updater.complete_rows). Runs on the caller's thread;
# for a full export it may defer the bulk of the work to the full snapshot's build thread.
Complete = Callable[[SnapshotArrays, bool], SnapshotArrays | DeferredArrays]


def snapshot_arrays(
    exports: Sequence[ShardExport], names: Names, cold_keys: set[int], excluded: Collection[str] = ()
) -> tuple[SnapshotArrays, int]:
    """Rows worth serving (learned from at least one pair, or given a content vector, and whose item id
    is not ``excluded``), and how many rows were left out because their item id is unknown to this
    process. ``excluded`` is only asked about the exported ids, never walked: the items deleted from a
    catalogue pile up over a system's life, and turning them all into keys at every snapshot held the
    updater's loop 70-100 ms a delta at 100,000 deleted items, 1.4-1.7 s at a million (BENCHMARKS.md)."""
    keys = np.concatenate([e.keys for e in exports]) if exports else np.zeros(0, np.int64)
    counts = np.concatenate([e.counts for e in exports]) if exports else np.zeros(0, np.int64)
    ids = names(keys)
    cold = np.fromiter((k in cold_keys for k in keys.tolist()), dtype=bool, count=len(keys))
    named = np.fromiter((i is not None for i in ids), dtype=bool, count=len(keys))
    keep = named & ((counts > 0) | cold)
    if excluded:
        keep &= np.fromiter((i not in excluded for i in ids), dtype=bool, count=len(ids))
    dim = exports[0].input.shape[1] if exports else 0
    arrays = SnapshotArrays(
        ids=np.array([i for i, k in zip(ids, keep.tolist(), strict=True) if k], dtype=str).reshape(-1),
        input_vectors=np.concatenate([e.input for e in exports])[keep]
        if exports
        else np.zeros((0, dim), np.float32),
        output_vectors=np.concatenate([e.output for e in exports])[keep]
        if exports
        else np.zeros((0, dim), np.float32),
        counts=counts[keep],
        cold=cold[keep] & (counts[keep] == 0),
    )
    return arrays, int((~named).sum())


def _changed_after(export: ShardExport, version: int | None) -> ShardExport:
    if version is None:
        return export
    return _rows_of(export, export.versions > version)


class PublishedCounts:
    """The interaction count of every row as last published, by key (sorted arrays: a dict of 1M
    keys would cost ~100 MB and a Python loop per delta)."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)

    def reset(self, keys: np.ndarray, counts: np.ndarray) -> None:
        order = np.argsort(keys)
        self.keys, self.counts = keys[order], counts[order]

    def moved(self, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Whether each row is new or its count differs from the published one."""
        at, found = self._find(keys)
        moved = np.ones(len(keys), dtype=bool)
        moved[found] = self.counts[at[found]] != counts[found]
        return moved

    def forget(self, keys: np.ndarray) -> None:
        """Rows no longer published (expired): a key that comes back is new, whatever its count."""
        at, found = self._find(keys)
        keep = np.ones(len(self.keys), dtype=bool)
        keep[at[found]] = False
        self.keys, self.counts = self.keys[keep], self.counts[keep]

    def update(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Rows (distinct keys) as published now."""
        at, found = self._find(keys)
        self.counts[at[found]] = counts[found]
        if not found.all():
            order = np.argsort(keys[~found])
            new_keys, new_counts = keys[~found][order], counts[~found][order]
            where = np.searchsorted(self.keys, new_keys)
            self.keys = np.insert(self.keys, where, new_keys)
            self.counts = np.insert(self.counts, where, new_counts)

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.searchsorted(self.keys, keys)
        found = at < len(self.keys)
        found[found] = self.keys[at[found]] == keys[found]
        return at, found


def _rows_of(export: ShardExport, rows: np.ndarray) -> ShardExport:
    return ShardExport(
        export.version,
        export.keys[rows],
        export.input[rows],
        export.output[rows],
        export.counts[rows],
        export.versions[rows],
        export.removed,
    )


@dataclass(frozen=True)
class _Meta:
    """What a snapshot's manifest says besides its rows: the cut it covers and the scoring constants."""

    offsets: Mapping[str, Mapping[int, int]]
    newest_event_ts: float | None
    newest_record_ts: float | None
    scoring: Mapping[str, float] | None


@dataclass(frozen=True)
class _Write:
    version: int
    arrays: SnapshotArrays | DeferredArrays  # deferred only while its build runs (_FullBuild)
    parent: int | None  # None for a full snapshot
    meta: _Meta
    make_latest: bool = True
    exact: bool = False  # ship exact indexes (built by the writer)
    prepared: PreparedFiles | None = None  # a full snapshot's files, already written by its build
    exact_base: bool = False  # a full snapshot whose indexes are exact: an approximate one is due


@dataclass
class _FullBuild:
    """A full snapshot whose indexes and files a build thread is making, and the rows changed since
    its cut."""

    arrays: SnapshotArrays | DeferredArrays  # assembled by the build thread first
    meta: _Meta
    catch_up: SnapshotArrays
    thread: threading.Thread | None = None
    prepared: PreparedFiles | None = None
    error: Exception | None = None
    reason: str = ""  # why it is not published: recall | index_failed | write_failed
    exact: bool = False  # exact indexes (quick), for a cut the chain's small base cannot stand for

    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()


FULL, DELTA = "full", "delta"


class Snapshotter:
    def __init__(
        self,
        config: SnapshotConfig,
        store: SnapshotStore,
        metrics: SnapshotMetrics,
        shards: int,
        clock: Callable[[], float] = time.monotonic,
        index: IndexConfig | None = None,
    ) -> None:
        """``index`` (default ``IndexConfig()``) decides which full snapshots get a shipped index."""
        self.config = config
        self.store = store
        self.metrics = metrics
        self.index = index or IndexConfig()
        self._clock = clock
        self._next_due = clock()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shards = shards
        # Shard versions the rows published (or kept as catch-up) so far cover; None: export in full.
        self._since: list[int] | None = None
        self._chain: int | None = None  # the last version written, which a delta may extend
        # Versions are never reused: a full snapshot written just before a crash may sit above LATEST.
        self._last_version = max([*store.versions(), store.latest_version() or 0])
        self._since_full = config.full_every  # snapshots written since the last full one
        self._full_rows = 0  # rows of the last full snapshot
        self._changed: set[str] = set()  # ids in the deltas written on it since
        self._build: _FullBuild | None = None
        self._base_exact = False  # the chain's full snapshot has exact indexes only
        self._counts = PublishedCounts()  # what the served rows' counts are, for deltas to compare with
        self._plan: str | None = None  # what the last since() asked to export
        self._excluded: Collection[str] = ()  # item ids take() leaves out
        self._idle = False  # the last snapshot found nothing to publish
        self.published = 0
        self.failed = 0

    def expired(self, keys: np.ndarray) -> None:
        """The shards dropped these rows: when one comes back, a delta publishes it even if its
        count equals the one last published (an item clicked once, expired, clicked once again)."""
        self._counts.forget(np.asarray(keys, dtype=np.int64))

    def due(self) -> bool:
        return self._clock() >= self._next_due and not self._busy.locked()

    def since(self, coming_rows: int = 0, listed_rows: int = 0) -> list[int | None]:
        """What to export next: None per shard for a full export, else the shard version to diff from.

        ``coming_rows``: rows the caller is about to add (a listed catalogue still being encoded);
        ``listed_rows``: items listed since the last snapshot, a listing still flowing, which counts as
        ``LISTING_AHEAD`` snapshots' worth of rows to come. A full snapshot waits while those alone
        would change ``full_after_changed`` of it, for at most ``LISTING_WAIT`` times ``full_every``
        snapshots: under a bulk listing a full built now is outdated before its index is (bench e2e at
        1M: a catch-up delta of 615k rows after a 334k-row full, fifth session). The backlog alone let
        small fulls through whenever the encoding caught up with the listing (124-168k rows, then
        300k-row catch-up deltas, in the slow 1M runs of the seventh session)."""
        rows_for_full = self.config.full_after_changed * self._full_rows
        coming = coming_rows + LISTING_AHEAD * listed_rows
        listing = coming >= rows_for_full > 0 and self._since_full < LISTING_WAIT * self.config.full_every
        full_due = (
            self._build is None
            and not listing
            and (self._full_owed() or (not self._idle and self._since_full >= self.config.full_every))
        )
        self._plan = FULL if self._since is None or full_due else DELTA
        return [None] * self._shards if self._plan == FULL else list(self._since)

    def _full_owed(self) -> bool:
        """Whether the served chain needs a full snapshot whatever comes next, idle or not: its base
        has exact indexes only (at 1M items every query scans the million rows), or the rows changed
        since it reach ``full_after_changed`` of it (the API searches them exactly). A catalogue listed
        before any traffic would otherwise be served so until the first event."""
        rows_for_full = self.config.full_after_changed * self._full_rows
        return self._base_exact or len(self._changed) >= rows_for_full > 0

    def take(
        self,
        exports: Sequence[ShardExport],
        names: Names,
        cold_keys: set[int],
        offsets: Mapping[str, Mapping[int, int]],
        newest_event_ts: float | None,
        complete: Complete | None = None,
        scoring: Mapping[str, float] | None = None,
        newest_record_ts: float | None = None,
        excluded: Collection[str] = (),
    ) -> None:
        """Publish what changed in ``exports`` (made with ``since()``), writing in the background.
        ``complete`` turns the shards' rows into the served ones; ``scoring`` goes into the manifest;
        ``newest_record_ts`` is the Kafka timestamp of the newest record covered (for freshness);
        the rows of the ``excluded`` item ids (deleted from the catalogue) are not served."""
        self._excluded = excluded
        self._busy.acquire()  # released by the writer thread, or below if it never starts
        try:
            self._next_due = self._clock() + self.config.interval_s
            started = time.perf_counter()
            # Copies: the caller goes on advancing its offsets, and a full snapshot's meta outlives its build.
            copied = {topic: dict(parts) for topic, parts in offsets.items()}
            meta = _Meta(
                copied, newest_event_ts, newest_record_ts, None if scoring is None else dict(scoring)
            )
            writes = self._prepare(exports, names, cold_keys, meta, complete or (lambda rows, _full: rows))
            if writes:
                self._thread = threading.Thread(
                    target=self._write, args=(writes, started), name="snapshot-writer", daemon=True
                )
                self._thread.start()
        except BaseException:
            self._busy.release()
            raise
        if not writes:
            self._busy.release()

    def _prepare(
        self,
        exports: Sequence[ShardExport],
        names: Names,
        cold_keys: set[int],
        meta: _Meta,
        complete: Complete,
    ) -> list[_Write]:
        """Decide on the caller's thread what to write. ``complete`` sees a chain's delta rows before
        a full snapshot's rows, as the cold start's bookkeeping of what is published expects."""
        plan, self._plan = self._plan, None
        if plan is None:
            raise RuntimeError(
                "Snapshotter.take: expected exports made with since(), but since() was not called"
            )
        if plan == DELTA and self._since is None:
            return []  # a write failed after the export was planned: it diffs from a dropped chain
        versions = [e.version for e in exports]
        moved = versions != self._since
        changed = None  # rows changed since the chain's last snapshot, as served
        if self._chain is not None or plan == DELTA:
            since = self._since if plan == FULL else None  # a delta export holds only changed rows
            changed = complete(self._delta_rows(exports, names, cold_keys, since), False)
        if plan == FULL and (changed is None or moved or changed.changes or self._full_owed()):
            return self._prepare_full(exports, names, cold_keys, versions, changed, meta, complete)
        build = self._build
        if build is not None:
            build.catch_up = apply_delta(build.catch_up, changed)
            if build.done():
                self._build = None
                if build.prepared is not None:
                    self._since, self._idle = versions, False
                    return self._publish_build(build, meta)
                self._refuse_build(build)
        if not moved and changed.changes == 0:
            self._idle = True
            return []
        self._since, self._idle = versions, False
        return [] if self._chain is None else [self._delta(changed, meta)]

    def _prepare_full(
        self,
        exports: Sequence[ShardExport],
        names: Names,
        cold_keys: set[int],
        versions: list[int],
        changed: SnapshotArrays | None,
        meta: _Meta,
        complete: Complete,
    ) -> list[_Write]:
        self._counts.reset(
            np.concatenate([e.keys for e in exports]) if exports else np.zeros(0, np.int64),
            np.concatenate([e.counts for e in exports]) if exports else np.zeros(0, np.int64),
        )
        whole = complete(self._rows(exports, names, cold_keys), True)
        if whole.count == 0 and self._chain is None:
            return []  # nothing learned and no metadata yet: nothing worth serving
        self._since, self._idle = versions, False
        if whole.count < self.index.exact_below or self._chain is None:
            whole = _assembled(whole)  # small, or the first snapshot: written at once
        if whole.count < self.index.exact_below:  # a flat index is cheap: the API builds it
            return [self._full(whole, meta)]
        like = whole if isinstance(whole, SnapshotArrays) else changed  # a deferred full has a chain
        assert like is not None
        empty = SnapshotArrays(
            *(a[:0] for a in (like.ids, like.input_vectors, like.output_vectors, like.counts, like.cold))
        )
        # With a chain on a small base, this cut is first published with exact indexes, built and
        # written off the writer like an approximate one (writing it held every delta for 8 s at
        # 100k items; a delta holding the whole catalogue made every API swap as slow); the
        # approximate build follows at the next snapshot.
        exact = self._chain is not None and self._full_rows < self.index.exact_below
        build = _FullBuild(whole, meta, catch_up=empty, exact=exact)
        build.thread = threading.Thread(
            target=self._build_indexes, args=(build,), name="index-build", daemon=True
        )
        self._build = build
        build.thread.start()
        if self._chain is None:  # nothing to extend: serve this cut exactly meanwhile
            return [self._full(whole, meta, exact=True)]
        # The chain goes on while the index builds: what changed up to this cut is published on it too.
        return [self._delta(changed, meta)] if changed is not None and changed.changes else []

    def _delta_rows(self, exports, names, cold_keys, since) -> SnapshotArrays:
        """The rows a delta publishes: changed since ``since`` (when the exports are full ones), and
        with ``deltas_skip_negative_only_rows`` only those whose count moved or that are new."""
        if since is not None:
            exports = [_changed_after(e, s) for e, s in zip(exports, since, strict=True)]
        if self.config.deltas_skip_negative_only_rows:
            exports = [_rows_of(e, self._counts.moved(e.keys, e.counts)) for e in exports]
        for export in exports:
            self._counts.update(export.keys, export.counts)
        return self._rows(exports, names, cold_keys)

    def _rows(self, exports, names, cold_keys) -> SnapshotArrays:
        arrays, unnamed = snapshot_arrays(exports, names, cold_keys, self._excluded)
        if unnamed:
            log.warning("snapshot: %d rows have item ids unknown to this updater; left out", unnamed)
        return arrays

    def _full(
        self,
        arrays: SnapshotArrays,
        meta: _Meta,
        make_latest: bool = True,
        exact: bool = False,
        prepared: PreparedFiles | None = None,
        exact_base: bool = False,
    ) -> _Write:
        self._last_version += 1
        self._full_rows, self._changed = arrays.count, set()
        return _Write(
            self._last_version, arrays, None, meta, make_latest, exact, prepared, exact_base or exact
        )

    def _delta(self, arrays: SnapshotArrays, meta: _Meta, parent: int | None = None) -> _Write:
        self._last_version += 1
        self._changed.update(arrays.ids.tolist())
        if arrays.removed_count:
            self._changed.update(arrays.removed_ids.tolist())
        return _Write(self._last_version, arrays, self._chain if parent is None else parent, meta)

    def _publish_build(self, build: _FullBuild, meta: _Meta) -> list[_Write]:
        """The built full snapshot, and the catch-up delta on it that becomes the latest."""
        if build.catch_up.changes == 0:
            return [self._full(build.arrays, build.meta, prepared=build.prepared, exact_base=build.exact)]
        full = self._full(
            build.arrays, build.meta, make_latest=False, prepared=build.prepared, exact_base=build.exact
        )
        return [full, self._delta(build.catch_up, meta, parent=full.version)]

    def _refuse_build(self, build: _FullBuild) -> None:
        log.error("snapshot: full snapshot not published (%s): %s", build.reason, build.error)
        self.metrics.refused.labels(build.reason).inc()
        self.failed += 1
        if self._chain is not None:  # retry later (full_every snapshots or as many changes), not at once
            self._since_full, self._changed, self._base_exact = 1, set(), False

    def _build_indexes(self, build: _FullBuild) -> None:
        """Build and gate the indexes, then write the snapshot's files (hundreds of MB at 100k rows),
        all off the writer thread, so deltas go on being published meanwhile."""
        ThreadPriority(self.index.build_niceness).apply()
        try:
            arrays = build.arrays = _assembled(build.arrays)
            with_new_items = serves_new_items(build.meta.scoring, arrays.content_vectors is not None)
            if build.exact:
                indexes = exact_main_indexes(
                    arrays.input_vectors, arrays.output_vectors, arrays.counts, self.index
                )
            else:
                indexes = build_main_indexes(
                    arrays.input_vectors,
                    arrays.output_vectors,
                    arrays.counts,
                    self.index,
                    discovery=~arrays.cold if with_new_items else None,
                )
        except RecallGateError as exc:
            build.error, build.reason = exc, "recall"
            return
        except Exception as exc:  # e.g. out of memory: the chain goes on without this full snapshot
            log.exception("snapshot: index build failed")
            build.error, build.reason = exc, "index_failed"
            return
        try:
            build.prepared = self.store.prepare(arrays, ship(indexes))
        except Exception as exc:  # disk full: the chain goes on without this full snapshot
            build.error, build.reason = exc, "write_failed"
            return
        if self._build is not build:  # dropped meanwhile (a failed write): never published
            self.store.discard(build.prepared)

    def _write(self, writes: list[_Write], started: float) -> None:
        try:
            for write in writes:
                meta, indexes = write.meta, None
                if write.exact:
                    a = write.arrays
                    indexes = exact_main_indexes(a.input_vectors, a.output_vectors, a.counts, self.index)
                self.store.write(
                    write.version,
                    write.arrays,
                    offsets=meta.offsets,
                    newest_event_ts=meta.newest_event_ts,
                    parent_version=write.parent,
                    scoring=meta.scoring,
                    index=None if indexes is None else ship(indexes),
                    newest_record_ts=meta.newest_record_ts,
                    make_latest=write.make_latest,
                    prepared=write.prepared,
                )
                self._chain = write.version
                self._since_full = 1 if write.parent is None else self._since_full + 1
                if write.parent is None:
                    self._base_exact = write.exact_base and write.arrays.count >= self.index.exact_below
                self.published += 1
                self.metrics.published.inc()
                if write.parent is None:
                    self.metrics.items.set(write.arrays.count)
                self.metrics.last_published.set(time.time())
        except Exception as exc:  # disk full, permissions: keep serving the previous snapshot
            log.error("snapshot %d: write failed, the previous snapshot stays live: %s", write.version, exc)
            self.failed += 1
            self.metrics.refused.labels("write_failed").inc()
            if self._build is not None and self._build.prepared is not None:
                self.store.discard(self._build.prepared)
            self._chain, self._since, self._build = None, None, None  # the next one must not depend on it
        else:
            self.metrics.build_seconds.observe(time.perf_counter() - started)
        finally:
            self._busy.release()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the write in flight, if any (shutdown, tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for the index build in flight, if any; whether none is still running. The next
        ``take()`` publishes it."""
        build = self._build
        if build is not None and build.thread is not None:
            build.thread.join(timeout)
            return not build.thread.is_alive()
        return True
