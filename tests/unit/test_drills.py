"""The drill's pure parts: which rows are compared, and the neighbour overlap measure."""

from __future__ import annotations

import numpy as np
import pytest

from recsim_stream.dead_letter import DeadLetter
from recsim_stream.drills import DrillOptions, dead_letter_sources, learned_rows, neighbour_overlap
from recsim_stream.events import BadReason


def _shard(keys, counts, live, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "keys": np.array(keys, np.int64),
        "counts": np.array(counts, np.int64),
        "live": np.array(live, bool),
        "input": rng.normal(size=(len(keys), dim)).astype(np.float32),
    }


def test_learned_rows_keeps_live_rows_with_enough_interactions():
    rows = learned_rows([_shard([1, 2, 3], [5, 30, 40], [True, True, False]), _shard([9], [20], [True])], 20)
    assert sorted(rows) == [2, 9]


def test_identical_tables_overlap_fully_and_unrelated_ones_little():
    rng = np.random.default_rng(1)
    table = {k: rng.normal(size=8) for k in range(200)}
    other = {k: rng.normal(size=8) for k in range(200)}
    assert neighbour_overlap(table, table, 10) == 1.0
    assert neighbour_overlap(table, other, 10) < 0.2


def test_overlap_is_undefined_with_too_few_common_items():
    assert neighbour_overlap({1: np.ones(2)}, {1: np.ones(2), 2: np.ones(2)}, 10) is None


def test_dead_letter_sources_are_distinct_records():
    letter = DeadLetter(b"x", 1, None, BadReason.NOT_MSGPACK, "", "events", 2, 40, 0.0)
    again = DeadLetter(b"x", 1, None, BadReason.NOT_MSGPACK, "", "events", 2, 40, 9.0)
    assert dead_letter_sources([letter, again]) == {("events", 2, 40)}


def test_options_refuse_an_unknown_fault():
    with pytest.raises(ValueError, match="fault must be one of"):
        DrillOptions(fault="unplug")
