"""Pacing of a stream: a wall-clock rate limit, and event-time replay at a speed factor.

Both sleep in coarse steps (at least ``min_sleep_s``), never once per event: a sleep per event costs
more than producing it, and the OS cannot sleep for microseconds anyway. Clock and sleep are
injected, so tests run on a fake clock in no time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class RateLimiter:
    """At most ``rate`` events per wall second on average; ``rate`` 0 means no limit.

    A producer that falls behind (a slow broker) may catch up in a burst of at most ``max_burst_s``
    worth of events, not the whole backlog.
    """

    def __init__(
        self,
        rate: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        min_sleep_s: float = 0.01,
        max_burst_s: float = 1.0,
    ) -> None:
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a finite number >= 0 (0 = no limit), got {rate!r}")
        if min_sleep_s <= 0 or max_burst_s < 0:
            raise ValueError(
                f"min_sleep_s must be > 0 and max_burst_s >= 0, got {min_sleep_s}, {max_burst_s}"
            )
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._min_sleep_s = min_sleep_s
        self._max_burst_s = max_burst_s
        self._start: float | None = None
        self._count = 0.0  # events admitted since _start

    def admit(self, n: int = 1) -> None:
        """Account for ``n`` events about to be sent; sleeps once the schedule is ahead by a step."""
        if self.rate == 0:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._count / self.rate
        if now - due > self._max_burst_s:  # behind by more than a burst: forgive the rest
            self._start += now - due - self._max_burst_s
            due = now - self._max_burst_s
        self._count += n
        ahead = due - now
        if ahead >= self._min_sleep_s:
            self._sleep(ahead)


class ReplayPacer:
    """Release events at ``speed`` x their event-time pace (60 = one hour of event time per minute).

    ``speed`` 0 means as fast as possible. A gap in event time longer than ``max_wait_s`` of wall time
    is cut to ``max_wait_s`` (a night without traffic need not stall a demo), and pacing continues from
    there.
    """

    def __init__(
        self,
        speed: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        min_sleep_s: float = 0.01,
        max_wait_s: float = math.inf,
    ) -> None:
        if not (speed >= 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a finite number >= 0 (0 = as fast as possible), got {speed!r}")
        if min_sleep_s <= 0 or max_wait_s <= 0:
            raise ValueError(f"min_sleep_s and max_wait_s must be > 0, got {min_sleep_s}, {max_wait_s}")
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._min_sleep_s = min_sleep_s
        self._max_wait_s = max_wait_s
        self._anchor: tuple[float, float] | None = None  # (wall time, event time) that correspond

    def wait_for(self, event_ts: float) -> None:
        """Call before sending an event with time ``event_ts`` (non-decreasing across calls)."""
        if self.speed == 0:
            return
        now = self._clock()
        if self._anchor is None:
            self._anchor = (now, event_ts)
            return
        wall0, ts0 = self._anchor
        ahead = wall0 + (event_ts - ts0) / self.speed - now
        if ahead > self._max_wait_s:
            self._anchor = (now + self._max_wait_s, event_ts)
            ahead = self._max_wait_s
        if ahead >= self._min_sleep_s:
            self._sleep(ahead)
