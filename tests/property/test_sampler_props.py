"""The negative sampler's table as batches of keys arrive: it grows with the keys, stays within its
configured size, holds only observed keys, and a saved sampler continues as the original."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import LearnConfig
from recsim_stream.sampler import MIN_SLOTS, SLOTS_PER_KEY, NegativeSampler

# A table small enough that a few hundred keys reach its size, so the cap is exercised too.
CONFIG = LearnConfig(sampler_table_size=1 << 15, seed=5)
batches_st = st.lists(
    st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 400), min_size=1, max_size=120),
    min_size=1,
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(batches_st)
def test_the_table_holds_observed_keys_and_grows_with_them_within_its_size(batches):
    sampler, observed = NegativeSampler(CONFIG), set()
    for batch in batches:
        sampler.observe(np.array(batch, dtype=np.int64))
        observed |= set(batch)
        table = sampler.state()["table"]
        assert set(np.unique(table).tolist()) <= observed
        assert len(table) <= CONFIG.sampler_table_size
        # At least half of what the keys ask for (a first fill may round a few slots short of it).
        wanted = min(CONFIG.sampler_table_size, max(MIN_SLOTS, SLOTS_PER_KEY * len(observed)))
        assert len(table) > wanted // 2 - len(observed)
    assert set(sampler.sample(200).tolist()) <= observed


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
    assert resumed.state()["table"].tolist() == original.state()["table"].tolist()
    assert resumed.sample(100).tolist() == original.sample(100).tolist()
