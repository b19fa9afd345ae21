import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.sharding import KeyIndex, distinct, item_key, item_keys, shard_of, split_by_shard

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(st.lists(int64s, max_size=200), st.integers(1, 16), st.randoms())
def test_a_key_routes_to_the_same_shard_whatever_batch_it_arrives_in(keys, n_shards, random):
    array = np.array(keys, dtype=np.int64)
    shuffled = list(range(len(keys)))
    random.shuffle(shuffled)
    alone = [int(shard_of(np.array([k], dtype=np.int64), n_shards)[0]) for k in keys]
    assert shard_of(array, n_shards).tolist() == alone
    assert shard_of(array[shuffled], n_shards).tolist() == [alone[i] for i in shuffled]


@given(st.lists(int64s, max_size=200), st.integers(1, 8))
def test_split_by_shard_covers_every_position_once(keys, n_shards):
    parts = split_by_shard(np.array(keys, dtype=np.int64), n_shards)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(keys)))


@given(st.lists(st.text(max_size=20), max_size=50))
def test_batched_keys_equal_single_keys(ids):
    assert item_keys(ids).tolist() == [item_key(i) for i in ids]


@given(st.lists(int64s, max_size=300), st.integers(0, 3))
def test_distinct_keys_equal_numpys_unique(keys, repeats):
    """Few distinct values repeated (the trainer's batches), or all distinct, negative keys included."""
    array = np.array(keys * (repeats + 1), dtype=np.int64)
    got, expected = distinct(array), np.unique(array, return_inverse=True)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


@settings(max_examples=50)
@given(st.lists(st.tuples(st.booleans(), st.lists(int64s, max_size=40)), max_size=30))
def test_key_index_behaves_like_a_dict(operations):
    index, model = KeyIndex(16), {}
    for step, (is_insert, keys) in enumerate(operations):
        keys = list(dict.fromkeys(keys))
        if is_insert:
            new = [k for k in keys if k not in model]
            index.insert(np.array(new, dtype=np.int64), np.full(len(new), step))
            model.update(dict.fromkeys(new, step))
        else:
            index.remove(np.array(keys, dtype=np.int64))
            for k in keys:
                model.pop(k, None)
        probe = np.array(keys + list(model), dtype=np.int64)
        assert index.get(probe).tolist() == [model.get(int(k), -1) for k in probe]
        assert len(index) == len(model)
