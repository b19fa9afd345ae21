import numpy as np
import pytest

from recsim_stream.config import LearnConfig
from recsim_stream.sampler import NegativeSampler

CONFIG = LearnConfig(sampler_table_size=1 << 16, seed=3)


def _stream(counts: dict[int, int], batches: int, seed: int = 0) -> list[np.ndarray]:
    tokens = np.repeat(np.array(list(counts)), list(counts.values()))
    np.random.default_rng(seed).shuffle(tokens)
    return np.array_split(tokens, batches)


def test_empirical_distribution_matches_count_power_within_two_percent_total_variation():
    counts = {key: int(1000 / rank) for rank, key in enumerate(range(100, 200), start=1)}
    sampler = NegativeSampler(CONFIG)
    for batch in _stream(counts, batches=50):
        sampler.observe(batch)
    keys = np.array(list(counts))
    target = np.array(list(counts.values()), dtype=float) ** 0.75
    target /= target.sum()
    draws = sampler.sample(400_000)
    empirical = np.array([(draws == k).mean() for k in keys])
    assert 0.5 * np.abs(empirical - target).sum() < 0.02


def test_new_key_enters_with_its_share_after_the_table_is_full():
    sampler = NegativeSampler(CONFIG)
    for batch in _stream({1: 50_000, 2: 50_000}, batches=20):
        sampler.observe(batch)
    sampler.observe(np.full(50_000, 3))
    share = (sampler.sample(100_000) == 3).mean()
    assert abs(share - 1 / 3) < 0.02


def test_size_counts_distinct_keys_and_count_reports_observations():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.array([4, 4, 9]))
    sampler.observe(np.array([9, 9, 11]))
    assert sampler.size == 3
    assert sampler.count(np.array([4, 9, 11, 12])).tolist() == [2, 3, 1, 0]


def test_sample_before_any_observation_says_what_to_do():
    with pytest.raises(ValueError, match="no key observed yet"):
        NegativeSampler(CONFIG).sample(1)


def test_sample_pool_indices_point_into_the_pool():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.arange(1000))
    pool, pick = sampler.sample_pool(pairs=300, negatives=5, pool_size=64)
    assert (pool.shape, pick.shape) == ((64,), (300, 5))
    assert (pick.min() >= 0, pick.max() < 64) == (True, True)


def test_sample_pool_without_pool_draws_every_negative():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.arange(10))
    pool, pick = sampler.sample_pool(pairs=3, negatives=2, pool_size=0)
    assert (pool.shape, pick.tolist()) == ((6,), [[0, 1], [2, 3], [4, 5]])


def test_restored_sampler_continues_exactly_like_the_original():
    original = NegativeSampler(CONFIG)
    original.observe(np.arange(500) % 37)
    resumed = NegativeSampler(CONFIG)
    resumed.restore(original.state())
    for sampler in (original, resumed):
        sampler.observe(np.arange(300) % 53)
    assert resumed.sample(1000).tolist() == original.sample(1000).tolist()
    assert resumed.count(np.arange(60)).tolist() == original.count(np.arange(60)).tolist()


def test_the_table_in_use_grows_with_the_keys_up_to_the_configured_size():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.arange(10))  # 10 keys: 4,096 slots (a first fill may round a few short)
    assert 4096 - 10 <= len(sampler.state()["table"]) <= 4096
    sampler.observe(np.arange(10, 100))  # 100 keys: 32,768 slots, reached by doubling
    assert 32768 - 80 <= len(sampler.state()["table"]) <= 32768
    sampler.observe(np.arange(100, 5000))  # would want 2^21: the table stops at its 2^16
    assert len(sampler.state()["table"]) <= CONFIG.sampler_table_size
    assert len(sampler.state()["table"]) > CONFIG.sampler_table_size // 2


def test_doubling_the_table_keeps_every_share_exactly():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.repeat(np.arange(5), [1, 2, 4, 8, 16]))
    before = sampler.state()["table"]
    sampler._grow(4 * len(before))
    after = sampler.state()["table"]
    assert len(after) == 4 * len(before)
    for key in range(5):
        assert (after == key).mean() == (before == key).mean()


def test_a_state_whose_table_is_larger_than_the_configured_one_is_refused_clearly():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.arange(10))
    state = sampler.state()
    state["table"] = np.zeros(CONFIG.sampler_table_size + 1, dtype=np.int64)
    with pytest.raises(ValueError, match="at most table_size"):
        NegativeSampler(CONFIG).restore(state)
