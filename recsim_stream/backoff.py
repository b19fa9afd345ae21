"""Retry pacing and outage bookkeeping for clients of a service that can go away (the Kafka broker).

Pure: no I/O, no clock of its own (the caller passes ``now``), a seeded ``random.Random`` for the
jitter, so both are tested in milliseconds and behave the same in every adapter that uses them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


class Backoff:
    """Capped exponential delays with jitter: ``initial_s``, then times ``factor`` per attempt, never
    above ``max_s``; each delay is spread by up to ``jitter`` (a fraction) either way, so clients
    that lost the same broker at the same moment do not all retry in step. ``reset`` after a success.
    """

    def __init__(
        self,
        initial_s: float = 0.1,
        max_s: float = 5.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"Backoff: expected 0 < initial_s <= max_s, got {initial_s} and {max_s}")
        if factor < 1:
            raise ValueError(f"Backoff: expected factor >= 1, got {factor}")
        if not 0 <= jitter < 1:
            raise ValueError(f"Backoff: expected jitter within [0, 1), got {jitter}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempts = 0  # delays handed out since the last reset

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        base = min(self.max_s, self.initial_s * self.factor**self.attempts)
        self.attempts += 1
        return base * (1 + self.jitter * self._rng.uniform(-1.0, 1.0))

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class Outage:
    """One period during which a dependency did not answer: when it started and how many attempts
    failed in it. ``fail`` says whether a failure starts one (log it once, not per retry);
    ``recover`` returns how long the one that just ended lasted (None if none was under way)."""

    started_at: float | None = None
    failures: int = 0

    @property
    def ongoing(self) -> bool:
        return self.started_at is not None

    def fail(self, now: float) -> bool:
        self.failures += 1
        if self.started_at is not None:
            return False
        self.started_at = now
        return True

    def recover(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        lasted = max(0.0, now - self.started_at)
        self.started_at = None
        self.failures = 0
        return lasted
