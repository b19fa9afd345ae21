import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import LearnConfig
from recsim_stream.shard import ParameterShard

CONFIG = LearnConfig(dim=3, expire_after_s=50.0)
keys_st = st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 30), min_size=1, max_size=60)
# Each step: pull keys, or push keys with a gradient value and an event time, or expire at a time.
step_st = st.one_of(
    st.tuples(st.just("pull"), keys_st, st.just(0.0)),
    st.tuples(st.just("push"), keys_st, st.floats(0, 100)),
    st.tuples(st.just("expire"), st.just([0]), st.floats(0, 200)),
)


def _apply(shard: ParameterShard, kind: str, keys: list[int], value: float) -> set[int]:
    """Apply one step; returns the keys it expired."""
    array = np.array(keys, dtype=np.int64)
    if kind == "pull":
        shard.pull(array)
    elif kind == "push":
        grad = np.full((len(keys), 3), 0.1, dtype=np.float32)
        shard.push(array, grad, -grad, np.ones(len(keys), np.int64), ts=value)
    else:
        return set(shard.expire(now_ts=value).tolist())
    return set()


@settings(max_examples=60, deadline=None)
@given(st.lists(step_st, max_size=12))
def test_export_holds_exactly_the_live_keys_with_the_rows_pull_returns(steps):
    shard, live = ParameterShard(CONFIG), set()
    for kind, keys, value in steps:
        expired = _apply(shard, kind, keys, value)
        assert expired <= live
        live = (live - expired) | (set(keys) if kind != "expire" else set())
    exported = shard.export()
    assert sorted(exported.keys.tolist()) == sorted(live)
    if len(exported.keys):
        in_rows, out_rows = shard.pull(exported.keys)
        assert np.array_equal(in_rows, exported.input) and np.array_equal(out_rows, exported.output)


@settings(max_examples=40, deadline=None)
@given(st.lists(step_st, max_size=10), st.lists(step_st, max_size=6))
def test_restore_then_continue_equals_continue(before, after):
    original = ParameterShard(CONFIG)
    for step in before:
        _apply(original, *step)
    resumed = ParameterShard(CONFIG)
    resumed.restore(original.state())
    for step in after:
        _apply(original, *step)
        _apply(resumed, *step)
    a, b = original.export(), resumed.export()
    assert (a.keys.tolist(), a.counts.tolist(), a.versions.tolist()) == (
        b.keys.tolist(),
        b.counts.tolist(),
        b.versions.tolist(),
    )
    assert np.array_equal(a.input, b.input) and np.array_equal(a.output, b.output)
    assert original.stats() == resumed.stats()
