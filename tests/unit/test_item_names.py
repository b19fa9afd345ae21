"""The log of item ids that updaters sharing shards append to and the publisher reads."""

from __future__ import annotations

from recsim_stream.item_names import NameLog


def test_ids_are_appended_once_in_first_seen_order():
    log = NameLog()
    log.add(["i1", "i2"])
    log.add(["i2", "i3", "i1"])
    assert log.since(0) == (["i1", "i2", "i3"], 3)


def test_a_read_returns_only_what_was_appended_after_its_position():
    log = NameLog()
    log.add(["i1", "i2"])
    log.add(["i3"])
    assert log.since(2) == (["i3"], 3)


def test_a_read_at_the_end_returns_nothing_new():
    log = NameLog()
    log.add(["i1"])
    assert log.since(1) == ([], 1)
