import numpy as np
import pytest

from recsim_stream.config import LearnConfig
from recsim_stream.sampler import MIN_CAPACITY, NegativeSampler, fenwick_tree

CONFIG = LearnConfig(seed=3)


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


def test_a_new_key_enters_with_its_share_after_many_batches():
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


def test_the_tree_holds_every_weight_as_the_updates_leave_it_across_growth():
    sampler = NegativeSampler(CONFIG)
    counts = {}
    rng = np.random.default_rng(1)
    for batch in range(6):  # 3,000 keys: the arrays double from 1,024 to 4,096 on the way
        keys = rng.integers(0, 500 * (batch + 1), 2000)
        sampler.observe(keys)
        for key in keys.tolist():
            counts[key] = counts.get(key, 0) + 1
    state = sampler.state()
    weights = np.zeros(len(state["tree"]) - 1)
    weights[: len(state["keys"])] = [counts[k] ** 0.75 for k in state["keys"].tolist()]
    np.testing.assert_allclose(state["tree"], fenwick_tree(weights), rtol=1e-12, atol=1e-9)
    assert len(state["tree"]) - 1 == max(MIN_CAPACITY, 1 << (len(counts) - 1).bit_length())


def test_a_key_of_a_small_share_is_drawn_at_its_share():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.repeat([1, 2], [1, 10_000]))  # weights 1 and 10,000^0.75 = 1,000
    share = (sampler.sample(1_000_000) == 1).mean()
    assert abs(share - 1 / 1001) < 3e-4


def test_a_checkpoint_of_the_table_sampler_restores_from_its_counts():
    table_state = {  # what the table sampler saved: no tree
        "table": np.array([7, 7, 9, 7], dtype=np.int64),
        "table_size": 1 << 20,
        "total": 2.0,
        "keys": np.array([7, 9], dtype=np.int64),
        "counts": np.array([3, 1], dtype=np.int64),
        "rng": NegativeSampler(CONFIG).state()["rng"],
    }
    sampler = NegativeSampler(CONFIG)
    sampler.restore(table_state)
    assert sampler.count(np.array([7, 9, 8])).tolist() == [3, 1, 0]
    share = (sampler.sample(100_000) == 9).mean()
    assert abs(share - 1 / (1 + 3**0.75)) < 0.01


def test_a_state_whose_tree_does_not_fit_its_keys_is_refused_clearly():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.arange(10))
    state = sampler.state()
    state["tree"] = np.zeros(5)
    with pytest.raises(ValueError, match="nodes"):
        NegativeSampler(CONFIG).restore(state)
    state = sampler.state()
    state["counts"] = state["counts"][:-1]
    with pytest.raises(ValueError, match="one count >= 0 per key"):
        NegativeSampler(CONFIG).restore(state)


def test_a_forgotten_key_is_never_drawn_again_until_observed_again():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.repeat(np.arange(5), [50, 1, 1, 1, 1]))
    sampler.forget(np.array([0, 2, 99]))  # 99 was never observed: nothing to forget
    assert sampler.count(np.arange(5)).tolist() == [0, 1, 0, 1, 1]
    assert (sampler.size, sampler.drawable) == (5, 3)
    assert set(sampler.sample(20_000).tolist()) == {1, 3, 4}
    sampler.forget(np.array([0]))  # twice: no change
    sampler.observe(np.array([0]))
    assert (sampler.count(np.array([0])).tolist(), sampler.drawable) == ([1], 4)
    share = (sampler.sample(40_000) == 0).mean()
    assert abs(share - 0.25) < 0.01  # a count of 1 among four keys of count 1


def test_a_sampler_with_forgotten_keys_restores_and_draws_the_same():
    sampler = NegativeSampler(CONFIG)
    sampler.observe(np.repeat(np.arange(6), [9, 1, 4, 1, 2, 3]))
    sampler.forget(np.array([0, 4]))
    resumed = NegativeSampler(CONFIG)
    resumed.restore(sampler.state())
    assert resumed.drawable == sampler.drawable == 4
    assert np.array_equal(resumed.sample(1000), sampler.sample(1000))
    assert not np.isin(resumed.sample(10_000), [0, 4]).any()
