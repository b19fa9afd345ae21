"""Resharding a checkpoint's shard states: every row lands where the stable hash sends it under the
new count, pulls and counts are unchanged, and N -> M -> N gives back the original rows."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import LearnConfig
from recsim_stream.reshard import ROW_ARRAYS, reshard
from recsim_stream.shard import ParameterShard
from recsim_stream.sharding import shard_of, split_by_shard

CONFIG = LearnConfig(dim=3, expire_after_s=50.0)
counts_st = st.integers(1, 6)
keys_st = st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 30), min_size=1, max_size=40)
# Each step: push keys with gradients drawn from a seed at an event time, or expire at a time.
step_st = st.one_of(
    st.tuples(st.just("push"), keys_st, st.integers(0, 2**32 - 1), st.floats(0, 100)),
    st.tuples(st.just("expire"), st.just([0]), st.just(0), st.floats(0, 200)),
)
steps_st = st.lists(step_st, min_size=1, max_size=8)


def _shards(count: int, states=None) -> list[ParameterShard]:
    shards = [ParameterShard(CONFIG, i) for i in range(count)]
    for shard, state in zip(shards, states or [], strict=False):
        shard.restore(state)
    return shards


def _push(shards: list[ParameterShard], keys: list[int], seed: int, ts: float) -> None:
    array = np.array(keys, dtype=np.int64)
    rng = np.random.default_rng(seed)
    grad_in = rng.normal(size=(len(keys), 3)).astype(np.float32)
    grad_out = rng.normal(size=(len(keys), 3)).astype(np.float32)
    interactions = rng.integers(0, 3, size=len(keys))
    # Every shard gets every batch's push, empty or not, as from the trainer: their clocks agree.
    for shard, part in zip(shards, split_by_shard(array, len(shards)), strict=True):
        shard.push(array[part], grad_in[part], grad_out[part], interactions[part], ts=ts)


def _run(shards: list[ParameterShard], steps) -> None:
    for kind, keys, seed, value in steps:
        if kind == "push":
            _push(shards, keys, seed, value)
        else:
            for shard in shards:
                shard.expire(now_ts=value)


def _pull(shards: list[ParameterShard], keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows_in = np.zeros((len(keys), 3), np.float32)
    rows_out = np.zeros((len(keys), 3), np.float32)
    for shard, part in zip(shards, split_by_shard(keys, len(shards)), strict=True):
        rows_in[part], rows_out[part] = shard.pull(keys[part])
    return rows_in, rows_out


def _by_key(shards: list[ParameterShard]) -> dict[int, int]:
    exports = [s.export() for s in shards]
    return {k: c for e in exports for k, c in zip(e.keys.tolist(), e.counts.tolist(), strict=True)}


def _live_rows(state) -> dict[str, np.ndarray]:
    """The live rows of one shard state, ordered by key."""
    live = np.asarray(state["live"], bool)
    order = np.argsort(state["keys"][live], kind="stable")
    return {name: state[name][live][order] for name in ROW_ARRAYS}


@settings(max_examples=60, deadline=None)
@given(steps_st, counts_st, counts_st, keys_st)
def test_pulling_any_key_from_the_resharded_shards_returns_what_it_returned_before(steps, n, m, unseen):
    before = _shards(n)
    _run(before, steps)
    after = _shards(m, reshard([s.state() for s in before], m))
    keys = np.array(sorted({k for _kind, ks, _s, _v in steps for k in ks} | set(unseen)), dtype=np.int64)
    rows_before, rows_after = _pull(before, keys), _pull(after, keys)
    assert np.array_equal(rows_before[0], rows_after[0])
    assert np.array_equal(rows_before[1], rows_after[1])


@settings(max_examples=60, deadline=None)
@given(steps_st, counts_st, counts_st)
def test_counts_are_preserved_and_every_key_lives_where_the_stable_hash_sends_it(steps, n, m):
    before = _shards(n)
    _run(before, steps)
    after = _shards(m, reshard([s.state() for s in before], m))
    assert _by_key(after) == _by_key(before)
    for shard in after:
        keys = shard.export().keys
        assert shard_of(keys, m).tolist() == [shard.shard_id] * len(keys)


@settings(max_examples=60, deadline=None)
@given(steps_st, counts_st, counts_st)
def test_resharding_there_and_back_gives_back_the_original_rows(steps, n, m):
    before = _shards(n)
    _run(before, steps)
    original = [s.state() for s in before]
    back = reshard(reshard(original, m), n)
    for a, b in zip(original, back, strict=True):
        rows_a, rows_b = _live_rows(a), _live_rows(b)
        for name in ROW_ARRAYS:
            assert np.array_equal(rows_a[name], rows_b[name]), name


@settings(max_examples=60, deadline=None)
@given(steps_st, counts_st, counts_st)
def test_no_row_is_newer_than_its_shard_and_no_version_goes_back(steps, n, m):
    before = _shards(n)
    _run(before, steps)
    states = reshard([s.state() for s in before], m)
    newest = max(s.version for s in before)
    assert [int(s["version"]) for s in states] == [newest] * m
    for state in states:
        assert bool((state["updated"] <= state["version"]).all())
        assert bool((state["removed_versions"] <= state["version"]).all())


@settings(max_examples=40, deadline=None)
@given(steps_st, steps_st, counts_st, counts_st)
def test_training_on_after_resharding_equals_training_on_without_it(steps, later, n, m):
    kept = _shards(n)
    _run(kept, steps)
    moved = _shards(m, reshard([s.state() for s in kept], m))
    _run(kept, later)
    _run(moved, later)
    keys = np.array(sorted(_by_key(kept)), dtype=np.int64)
    assert sorted(_by_key(moved)) == keys.tolist()
    rows_kept, rows_moved = _pull(kept, keys), _pull(moved, keys)
    assert np.array_equal(rows_kept[0], rows_moved[0])
    assert np.array_equal(rows_kept[1], rows_moved[1])
