import numpy as np
import pytest

from recsim_stream.sharding import KeyIndex, item_key, item_keys, shard_of, split_by_shard


def test_item_key_is_a_fixed_function_of_the_id():
    assert item_key("item-1") == 8406168460641299428
    assert item_key("") == -5426141060434712860


def test_item_keys_matches_item_key_in_order():
    ids = ["a", "item-1", "42", "é"]
    assert item_keys(ids).tolist() == [item_key(i) for i in ids]


def test_item_keys_of_nothing_is_empty_int64():
    keys = item_keys([])
    assert (keys.dtype, keys.shape) == (np.dtype(np.int64), (0,))


def test_shard_of_is_a_fixed_function_of_key_and_shard_count():
    keys = np.array([0, 1, 2, 3, 8406168460641299428], dtype=np.int64)
    assert shard_of(keys, 4).tolist() == [3, 1, 2, 1, 0]


def test_shard_of_spreads_sequential_keys_evenly():
    counts = np.bincount(shard_of(np.arange(40_000), 4), minlength=4)
    assert counts.min() > 9_600


def test_shard_of_refuses_zero_shards():
    with pytest.raises(ValueError, match="n_shards must be >= 1, got 0"):
        shard_of(np.array([1]), 0)


def test_split_by_shard_scatters_and_gathers_back_in_order():
    keys = np.array([10, -4, 7, 10, 99, 0], dtype=np.int64)
    parts = split_by_shard(keys, 3)
    gathered = np.empty_like(keys)
    for s, part in enumerate(parts):
        assert (shard_of(keys[part], 3) == s).all()
        gathered[part] = keys[part]
    assert gathered.tolist() == keys.tolist()


def test_key_index_gets_inserted_values_and_minus_one_for_absent_keys():
    index = KeyIndex()
    index.insert(np.array([5, -7, 2**62]), np.array([0, 1, 2]))
    assert index.get(np.array([-7, 5, 3, 2**62])).tolist() == [1, 0, -1, 2]


def test_key_index_grows_past_its_capacity():
    index = KeyIndex(16)
    index.insert(np.arange(5000), np.arange(5000) * 2)
    assert (len(index), index.get(np.array([4999]))[0]) == (5000, 9998)


def test_key_index_removed_key_is_absent_and_can_come_back():
    index = KeyIndex()
    index.insert(np.arange(10), np.arange(10))
    index.remove(np.array([3, 4, 123]))
    assert index.get(np.array([3, 4, 5])).tolist() == [-1, -1, 5]
    index.insert(np.array([3]), np.array([30]))
    assert (len(index), index.get(np.array([3]))[0]) == (9, 30)
