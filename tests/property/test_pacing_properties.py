"""Pacing properties over varied rates, batch sizes and speeds (fake clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from recsim_stream.pacing import RateLimiter, ReplayPacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


@given(
    rate=st.floats(min_value=1.0, max_value=1e6),
    batches=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=200),
    min_sleep=st.floats(min_value=0.001, max_value=0.5),
)
def test_rate_limiter_holds_the_rate_within_one_step(
    rate: float, batches: list[int], min_sleep: float
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock, clock.sleep, min_sleep_s=min_sleep)
    for n in batches:
        limiter.admit(n)
    # The last batch starts when the schedule reaches it: everything before it took count/rate.
    before_last = sum(batches[:-1]) / rate
    assert before_last - min_sleep - 1e-9 <= clock.now <= before_last + 1e-6 * max(1.0, before_last)


@given(
    rate=st.floats(min_value=1.0, max_value=1e5),
    count=st.integers(min_value=1, max_value=3000),
    min_sleep=st.floats(min_value=0.001, max_value=0.5),
)
def test_rate_limiter_sleeps_at_most_once_per_step(rate: float, count: int, min_sleep: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock, clock.sleep, min_sleep_s=min_sleep)
    for _ in range(count):
        limiter.admit()
    assert clock.sleeps <= count / (rate * min_sleep) + 1


@given(
    speed=st.floats(min_value=0.1, max_value=1e4),
    gaps=st.lists(st.floats(min_value=0.0, max_value=1e4), min_size=1, max_size=100),
)
def test_replay_wall_time_is_event_time_over_speed(speed: float, gaps: list[float]) -> None:
    clock = FakeClock()
    pacer = ReplayPacer(speed, clock, clock.sleep, min_sleep_s=0.01)
    ts = 1e9
    pacer.wait_for(ts)
    for gap in gaps:
        ts += gap
        pacer.wait_for(ts)
    expected = (ts - 1e9) / speed
    assert expected - 0.01 - 1e-6 <= clock.now <= expected + 1e-6 * max(1.0, expected)
