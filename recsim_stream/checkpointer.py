"""When to checkpoint, and writing off the updater's thread.

The state is captured on the updater's thread between two polls (the consistent cut) as copies, then
written by a background thread, so a slow or full disk delays the next checkpoint, never training.
A write that fails leaves the previous checkpoint as the restart point and is logged and counted;
the next one is tried at the next due time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from recsim_stream.checkpoint import CheckpointStore
from recsim_stream.config import CheckpointConfig
from recsim_stream.metrics import CheckpointMetrics

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(
        self,
        config: CheckpointConfig,
        store: CheckpointStore,
        metrics: CheckpointMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._clock = clock
        self._next_due = clock() + config.interval_s
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None
        self._records_at_last = 0  # records processed when the last checkpoint was captured
        self.written = 0
        self.failed = 0
        self.last_error: BaseException | None = None

    def restored(self, records: int) -> None:
        """The updater resumed from a checkpoint covering ``records`` records."""
        self._records_at_last = records

    def behind(self, records: int) -> bool:
        """Whether records were processed since the last capture."""
        return records > self._records_at_last

    def due(self, records: int) -> bool:
        """Whether to capture now, ``records`` being the records processed so far: something new, no
        write in flight, and the interval (or ``every_events``) has passed."""
        if not self.behind(records) or self._busy.locked():
            return False
        by_count = self.config.every_events and records - self._records_at_last >= self.config.every_events
        return bool(by_count) or self._clock() >= self._next_due

    def take(
        self, offsets: Mapping[tuple[str, int], int], state: Mapping, records: int, capture_s: float = 0.0
    ) -> None:
        """Write ``state`` (already a copy: the caller goes on mutating its own) in the background;
        ``capture_s`` is how long the caller's thread spent capturing it (training stood still)."""
        self._busy.acquire()
        self._next_due = self._clock() + self.config.interval_s
        self._records_at_last = records
        self._thread = threading.Thread(
            target=self._write, args=(dict(offsets), state, capture_s), name="checkpoint-writer", daemon=True
        )
        try:
            self._thread.start()
        except BaseException:
            self._busy.release()
            raise

    def _write(self, offsets: dict[tuple[str, int], int], state: Mapping, capture_s: float) -> None:
        started = time.perf_counter()
        try:
            seq = self.store.write(offsets, state)
        except Exception as exc:  # a full disk, permissions: the previous checkpoint stays
            self.failed += 1
            self.last_error = exc
            self.metrics.failed.inc()
            log.error("checkpoint: write failed, the previous checkpoint stays the restart point: %s", exc)
        else:
            self.written += 1
            self.metrics.written.inc()
            self.metrics.last_written.set(time.time())
            self.metrics.seconds.observe(capture_s + time.perf_counter() - started)
            log.info(
                "checkpoint %d: captured in %.2f s (training paused), written in %.2f s (background)",
                seq,
                capture_s,
                time.perf_counter() - started,
            )
        finally:
            self._busy.release()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the write in flight, if any (shutdown, tests)."""
        if self._thread is not None:
            self._thread.join(timeout)
