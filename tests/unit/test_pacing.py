"""Rate limiting and event-time replay on a fake clock."""

from __future__ import annotations

import pytest

from recsim_stream.pacing import RateLimiter, ReplayPacer


class FakeClock:
    """Time advances only when the code under test sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_spreads_events_over_the_expected_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000.0, clock, clock.sleep, min_sleep_s=0.01)
    for _ in range(5001):
        limiter.admit()
    assert clock.now == pytest.approx(5.0, abs=0.011)


def test_rate_limiter_sleeps_in_coarse_steps() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000.0, clock, clock.sleep, min_sleep_s=0.05)
    for _ in range(5001):
        limiter.admit()
    assert len(clock.sleeps) <= 100
    assert min(clock.sleeps) >= 0.05 - 1e-9


def test_rate_zero_never_sleeps() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.0, clock, clock.sleep)
    for _ in range(1000):
        limiter.admit(100)
    assert clock.sleeps == []


def test_rate_limiter_catches_up_at_most_one_burst_after_a_stall() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100.0, clock, clock.sleep, min_sleep_s=0.01, max_burst_s=1.0)
    limiter.admit()
    clock.now = 60.0  # the producer was stuck for a minute
    for _ in range(101):
        limiter.admit()  # one second's worth (and the event on time) goes out at once
    assert clock.sleeps == []
    limiter.admit()
    assert len(clock.sleeps) == 1


def test_rate_limiter_refuses_a_negative_rate() -> None:
    with pytest.raises(ValueError, match="rate must be"):
        RateLimiter(-1.0)


def test_replay_at_speed_60_plays_an_hour_in_a_minute() -> None:
    clock = FakeClock()
    pacer = ReplayPacer(60.0, clock, clock.sleep)
    for ts in range(1000, 1000 + 3601, 10):
        pacer.wait_for(float(ts))
    assert clock.now == pytest.approx(60.0)


def test_replay_speed_zero_never_sleeps() -> None:
    clock = FakeClock()
    pacer = ReplayPacer(0.0, clock, clock.sleep)
    for ts in range(0, 100_000, 100):
        pacer.wait_for(float(ts))
    assert clock.sleeps == []


def test_replay_cuts_long_idle_gaps_to_max_wait() -> None:
    clock = FakeClock()
    pacer = ReplayPacer(1.0, clock, clock.sleep, max_wait_s=5.0)
    pacer.wait_for(0.0)
    pacer.wait_for(1.0)
    pacer.wait_for(10_000.0)  # a night without traffic
    pacer.wait_for(10_002.0)
    assert clock.sleeps == [1.0, 5.0, 2.0]


def test_replay_does_not_sleep_for_tiny_steps() -> None:
    clock = FakeClock()
    pacer = ReplayPacer(1.0, clock, clock.sleep, min_sleep_s=0.01)
    for k in range(20):
        pacer.wait_for(k * 0.001)
    assert clock.sleeps == [pytest.approx(0.01)]
