"""Thread counts of the numeric libraries in a learning process, and how background threads step aside.

numpy's OpenBLAS starts one thread per core for every product big enough; on a two-core machine that
also runs the broker, Ray shards and the API, those threads spin and wait for a core. The cold start's
temperature calibration in a MovieLens eval (load ~4, timed by a scratch wrapper): 0.40 s with
OpenBLAS's default threads, 0.10 s with one.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)


def pin_blas_threads(threads: int) -> None:
    """Limit numpy's BLAS to ``threads`` for the rest of the process (threadpoolctl finds the
    library actually loaded, which an environment variable set after numpy's import cannot reach)."""
    threadpool_limits(threads, user_api="blas")


@dataclass(frozen=True)
class ThreadPriority:
    """How a background thread (an index build, a snapshot load) steps aside for the threads that
    serve queries. Linux schedules threads one by one, so it applies to the calling thread only.

    ``niceness`` lowers its share of a contended core. ``idle`` (SCHED_IDLE) gives it only CPU time
    no other thread wants, and a thread that wakes preempts it at once, where a niced thread may
    finish its scheduler slice first, milliseconds, at every wakeup of a request's threads: replaying
    a kept 1M-item chain on one core with a query thread, /recommend's p99 per 5 s window was
    8-24 ms with builds at niceness 10 and 2-9 ms under SCHED_IDLE, the CPU per query alike. Idle
    threads starve while other work keeps every core busy: for a service with cores of its own."""

    niceness: int = 0
    idle: bool = False

    def apply(self) -> None:
        """Lower the calling thread; where the platform refuses, it keeps the process's priority."""
        thread = threading.get_native_id()
        try:
            if self.niceness:
                os.setpriority(os.PRIO_PROCESS, thread, self.niceness)
            if self.idle:
                os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as exc:
            log.info("background thread keeps the process's priority (%s)", exc)
