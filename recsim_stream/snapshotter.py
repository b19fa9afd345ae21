"""From shard exports to published snapshots: full ones periodically, deltas in between.

The caller (the updater) exports every shard at a batch boundary, so the exports form a consistent
cut covering exactly the Kafka offsets it passes along. Writing (arrays, checksums, fsync) happens on
one background thread; while a write is in flight no new snapshot is due, so nothing queues up. A
failed write is counted and the next snapshot is a full one, so serving never depends on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from recsim_stream.config import SnapshotConfig
from recsim_stream.metrics import SnapshotMetrics
from recsim_stream.shard import ShardExport
from recsim_stream.snapshot import SnapshotArrays, SnapshotStore

log = logging.getLogger(__name__)

Names = Callable[[np.ndarray], list[str | None]]  # key -> item id (None when unknown here)
# (rows from the shards, whether they are a full export) -> the rows to publish: the cold start adds
# content-only rows and blends low-count ones (Updater.complete_rows). Runs on the caller's thread.
Complete = Callable[[SnapshotArrays, bool], SnapshotArrays]


def snapshot_arrays(
    exports: Sequence[ShardExport], names: Names, cold_keys: set[int]
) -> tuple[SnapshotArrays, int]:
    """Rows worth serving (learned from at least one pair, or given a content vector), and how many
    rows were left out because their item id is unknown to this process."""
    keys = np.concatenate([e.keys for e in exports]) if exports else np.zeros(0, np.int64)
    counts = np.concatenate([e.counts for e in exports]) if exports else np.zeros(0, np.int64)
    ids = names(keys)
    cold = np.fromiter((k in cold_keys for k in keys.tolist()), dtype=bool, count=len(keys))
    named = np.fromiter((i is not None for i in ids), dtype=bool, count=len(keys))
    keep = named & ((counts > 0) | cold)
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


class Snapshotter:
    def __init__(
        self,
        config: SnapshotConfig,
        store: SnapshotStore,
        metrics: SnapshotMetrics,
        shards: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._clock = clock
        self._next_due = clock()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shards = shards
        self._since: list[int | None] = [None] * shards  # shard versions of the last written snapshot
        self._last_version = store.latest_version()
        self._since_full = config.full_every  # snapshots since the last full one
        self.published = 0
        self.failed = 0

    def due(self) -> bool:
        return self._clock() >= self._next_due and not self._busy.locked()

    def since(self) -> list[int | None]:
        """What to export next: None per shard for a full export, else the shard version to diff from."""
        if self._last_version is None or self._since_full >= self.config.full_every:
            return [None] * self._shards
        return list(self._since)

    def take(
        self,
        exports: Sequence[ShardExport],
        names: Names,
        cold_keys: set[int],
        offsets: Mapping[str, Mapping[int, int]],
        newest_event_ts: float | None,
        complete: Complete | None = None,
        scoring: Mapping[str, float] | None = None,
    ) -> None:
        """Start writing a snapshot of ``exports`` (made with ``since()``) in the background.
        ``complete`` turns the shards' rows into the served ones; ``scoring`` goes into the manifest."""
        self._busy.acquire()  # released by the writer thread, or below if it never starts
        try:
            self._start_write(exports, names, cold_keys, offsets, newest_event_ts, complete, scoring)
        except BaseException:
            self._busy.release()
            raise

    def _start_write(self, exports, names, cold_keys, offsets, newest_event_ts, complete, scoring) -> None:
        self._next_due = self._clock() + self.config.interval_s
        full = any(e is None for e in self.since())
        started = time.perf_counter()
        arrays, unnamed = snapshot_arrays(exports, names, cold_keys)
        if unnamed:
            log.warning("snapshot: %d rows have item ids unknown to this updater; left out", unnamed)
        if complete is not None:
            arrays = complete(arrays, full)
        version = (self._last_version or 0) + 1
        parent = None if full else self._last_version
        shard_versions = [e.version for e in exports]
        self._thread = threading.Thread(
            target=self._write,
            args=(version, arrays, parent, shard_versions, dict(offsets), newest_event_ts, scoring, started),
            name="snapshot-writer",
            daemon=True,
        )
        self._thread.start()

    def _write(
        self, version, arrays, parent, shard_versions, offsets, newest_event_ts, scoring, started
    ) -> None:
        try:
            self.store.write(
                version,
                arrays,
                offsets=offsets,
                newest_event_ts=newest_event_ts,
                parent_version=parent,
                scoring=scoring,
            )
        except Exception as exc:  # disk full, permissions: keep serving the previous snapshot
            log.error("snapshot %d: write failed, the previous snapshot stays live: %s", version, exc)
            self.failed += 1
            self.metrics.refused.labels("write_failed").inc()
            self._since_full = self.config.full_every  # the next one must not depend on this one
        else:
            self._last_version = version
            self._since = list(shard_versions)
            self._since_full = 1 if parent is None else self._since_full + 1
            self.published += 1
            self.metrics.published.inc()
            if parent is None:
                self.metrics.items.set(arrays.count)
            self.metrics.last_published.set(time.time())
            self.metrics.build_seconds.observe(time.perf_counter() - started)
        finally:
            self._busy.release()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the write in flight, if any (shutdown, tests)."""
        if self._thread is not None:
            self._thread.join(timeout)
