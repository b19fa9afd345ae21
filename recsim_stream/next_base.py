"""A new full snapshot's main build, made on a thread of its own while the served base goes on.

Loading a full snapshot in the query API (reading and verifying every row, deserialising its
indexes, the id lookup, the cold rows) took 2.5-3.5 s at 100k items and ~7 s at 1M on the shared
2-core machine; done on the watcher's thread it held every swap for that long, so each full snapshot
showed as a freshness stall (bench e2e). ``SnapshotWatcher`` builds the next base here instead and,
until it is ready, appends the new chain's deltas to the served base's log (the bridge: see its
docstring for why that serves the same rows).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from recsim_stream.threads import ThreadPriority

log = logging.getLogger(__name__)

T = TypeVar("T")


class NextBase(Generic[T]):
    """``build()`` for full snapshot ``version``, run once on a daemon thread at ``priority``;
    ``take()`` hands over its result or raises its error, on the caller's thread, where the watcher
    counts refusals."""

    def __init__(self, version: int, build: Callable[[], T], priority: ThreadPriority) -> None:
        self.version = version
        self._result: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(build, priority), name=f"base-{version}-load", daemon=True
        )
        thread.start()

    def _run(self, build: Callable[[], T], priority: ThreadPriority) -> None:
        try:
            priority.apply()
            self._result = build()
        except BaseException as exc:  # handed to the watcher's thread by take()
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the build finished (either way) within ``timeout`` seconds."""
        return self._done.wait(timeout)

    def take(self) -> T:
        """The built result; raises the build's error. Only once ``done()``."""
        if not self._done.is_set():
            raise RuntimeError(f"NextBase.take: base {self.version} is still being built")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
