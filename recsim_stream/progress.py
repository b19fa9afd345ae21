"""One-line progress reports for long-running commands, at most every ``every_s`` seconds, on stderr.

``simulate: 120,000/1,000,000 events  48,210/s (overall 45,102/s)  ETA 18s``

The recent rate covers the time since the previous report, so a slowdown shows at once; the ETA uses
it too. Clock and output are injected so tests need no real time.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from recsim_stream.pacing import Clock


def format_duration(seconds: float) -> str:
    """``18s``, ``3m05s``, ``2h07m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Counts work done and prints a report line when at least ``every_s`` seconds have passed."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "events",
        every_s: float = 5.0,
        clock: Clock = time.monotonic,
        out: TextIO | None = None,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        self.label = label
        self.total = total
        self.unit = unit
        self.count = 0
        self._every_s = every_s
        self._clock = clock
        self._out = out
        self._start = clock()
        self._last_time = self._start
        self._last_count = 0

    def update(self, n: int = 1) -> None:
        """Add ``n`` done; prints when a report is due. Cheap enough to call per batch, not per event."""
        self.count += n
        now = self._clock()
        if now - self._last_time >= self._every_s:
            self._report(now)

    def finish(self) -> None:
        """Print the final line (always)."""
        self._report(self._clock())

    def line(self, now: float) -> str:
        overall = self.count / (now - self._start) if now > self._start else 0.0
        recent = (
            (self.count - self._last_count) / (now - self._last_time) if now > self._last_time else overall
        )
        done = f"{self.count:,}" if self.total is None else f"{self.count:,}/{self.total:,}"
        text = f"{self.label}: {done} {self.unit}  {recent:,.0f}/s (overall {overall:,.0f}/s)"
        if self.total is not None and self.count < self.total:
            rate = recent or overall
            text += f"  ETA {format_duration((self.total - self.count) / rate)}" if rate > 0 else "  ETA ?"
        return text

    def _report(self, now: float) -> None:
        out = self._out if self._out is not None else sys.stderr
        print(self.line(now), file=out, flush=True)
        self._last_time = now
        self._last_count = self.count
