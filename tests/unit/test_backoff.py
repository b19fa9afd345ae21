"""Backoff delays and outage bookkeeping (recsim_stream/backoff.py): pure, seeded, no clock."""

import random

import pytest

from recsim_stream.backoff import Backoff, Outage


def test_delays_double_from_the_initial_one_without_jitter():
    backoff = Backoff(initial_s=0.1, max_s=10.0, factor=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]


def test_delays_never_exceed_the_cap_without_jitter():
    backoff = Backoff(initial_s=0.5, max_s=2.0, factor=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_reset_starts_again_from_the_initial_delay():
    backoff = Backoff(initial_s=0.1, max_s=10.0, factor=2.0, jitter=0.0)
    backoff.next_delay()
    backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.1


def test_jitter_keeps_each_delay_within_its_fraction_of_the_base():
    backoff = Backoff(initial_s=1.0, max_s=1.0, factor=2.0, jitter=0.2, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(200)]
    assert (min(delays) >= 0.8, max(delays) <= 1.2) == (True, True)


def test_jitter_spreads_the_delays():
    backoff = Backoff(initial_s=1.0, max_s=1.0, factor=2.0, jitter=0.2, rng=random.Random(3))
    assert len({backoff.next_delay() for _ in range(20)}) == 20


def test_the_same_seed_gives_the_same_delays():
    first = Backoff(jitter=0.2, rng=random.Random(11))
    second = Backoff(jitter=0.2, rng=random.Random(11))
    assert [first.next_delay() for _ in range(6)] == [second.next_delay() for _ in range(6)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_s": 0.0}, "0 < initial_s <= max_s"),
        ({"initial_s": 2.0, "max_s": 1.0}, "0 < initial_s <= max_s"),
        ({"factor": 0.5}, "factor >= 1"),
        ({"jitter": 1.0}, "jitter within"),
    ],
)
def test_impossible_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_only_the_first_failure_starts_an_outage():
    outage = Outage()
    assert [outage.fail(10.0), outage.fail(11.0), outage.fail(12.5)] == [True, False, False]


def test_recovery_returns_how_long_the_outage_lasted():
    outage = Outage()
    outage.fail(10.0)
    outage.fail(11.0)
    assert outage.recover(14.5) == 4.5


def test_recovery_without_an_outage_returns_none():
    assert Outage().recover(3.0) is None


def test_a_failure_after_a_recovery_starts_a_new_outage():
    outage = Outage()
    outage.fail(1.0)
    outage.recover(2.0)
    assert (outage.fail(5.0), outage.started_at, outage.failures) == (True, 5.0, 1)
