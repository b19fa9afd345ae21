"""The negative sampler as batches of keys arrive: it draws only observed keys, its tree holds the
weights count^power, and a saved sampler continues as the original."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import LearnConfig
from recsim_stream.sampler import NegativeSampler, fenwick_tree

CONFIG = LearnConfig(seed=5)
batches_st = st.lists(
    st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 400), min_size=1, max_size=400),
    min_size=1,
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(batches_st)
def test_it_draws_observed_keys_and_its_tree_holds_their_weights(batches):
    sampler, counts = NegativeSampler(CONFIG), {}
    for batch in batches:
        sampler.observe(np.array(batch, dtype=np.int64))
        for key in batch:
            counts[key] = counts.get(key, 0) + 1
        assert set(sampler.sample(200).tolist()) <= set(counts)
    state = sampler.state()
    assert dict(zip(state["keys"].tolist(), state["counts"].tolist(), strict=True)) == counts
    weights = np.zeros(len(state["tree"]) - 1)
    weights[: len(counts)] = state["counts"].astype(np.float64) ** 0.75
    np.testing.assert_allclose(state["tree"], fenwick_tree(weights), rtol=1e-12, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(batches_st, batches_st)
def test_a_restored_sampler_continues_as_the_original_across_growth(before, after):
    original = NegativeSampler(CONFIG)
    for batch in before:
        original.observe(np.array(batch, dtype=np.int64))
    resumed = NegativeSampler(CONFIG)
    resumed.restore(original.state())
    for sampler in (original, resumed):
        for batch in after:
            sampler.observe(np.array(batch, dtype=np.int64))
    assert resumed.state()["tree"].tolist() == original.state()["tree"].tolist()
    assert resumed.sample(100).tolist() == original.sample(100).tolist()
