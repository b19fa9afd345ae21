import numpy as np
import pytest

import recsim_stream.shard as shard_module
from recsim_stream.config import LearnConfig
from recsim_stream.shard import ParameterShard, RowUpdate, adagrad_rows, initial_input

CONFIG = LearnConfig(dim=4, learning_rate=0.5, adagrad_initial=0.25, expire_after_s=100.0)


def _grad(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_pull_creates_rows_from_the_key_input_small_output_zero():
    in_rows, out_rows = ParameterShard(CONFIG).pull(np.array([7, 8]))
    assert np.array_equal(in_rows, initial_input(np.array([7, 8]), 4, CONFIG.seed))
    assert np.abs(in_rows).max() <= 0.125
    assert out_rows.tolist() == [[0.0] * 4, [0.0] * 4]


def test_initial_input_differs_between_keys_and_seeds():
    a, b = initial_input(np.array([1, 2]), 4, seed=1)
    assert not np.array_equal(a, b)
    assert not np.array_equal(initial_input(np.array([1]), 4, seed=2)[0], a)


def test_push_takes_a_rowwise_adagrad_step():
    shard = ParameterShard(CONFIG)
    before, _ = shard.pull(np.array([5]))
    shard.push(np.array([5]), _grad([1, 1, 1, 1]), np.zeros((1, 4), np.float32))
    after, _ = shard.pull(np.array([5]))
    # accumulator 0.25 + mean(g^2) = 1.25; step 0.5 / sqrt(1.25) per unit of gradient
    assert np.allclose(after - before, -0.5 / np.sqrt(1.25))


def test_push_sums_duplicate_keys():
    one, two = ParameterShard(CONFIG), ParameterShard(CONFIG)
    one.push(
        np.array([3, 3]),
        _grad([1, 0, 0, 0], [1, 2, 0, 0]),
        _grad([0, 0, 0, 1], [0, 0, 0, 1]),
        np.array([1, 1]),
    )
    two.push(np.array([3]), _grad([2, 2, 0, 0]), _grad([0, 0, 0, 2]), np.array([2]))
    assert np.array_equal(one.pull(np.array([3]))[0], two.pull(np.array([3]))[0])
    assert one.export().counts.tolist() == [2]


def test_zero_gradient_leaves_that_table_alone():
    shard = ParameterShard(CONFIG)
    before_in, _ = shard.pull(np.array([1]))
    shard.push(np.array([1]), np.zeros((1, 4), np.float32), _grad([1, 0, 0, 0]))
    after_in, after_out = shard.pull(np.array([1]))
    assert np.array_equal(after_in, before_in)
    assert after_out[0, 0] < 0


def test_push_returns_the_version_incremented_per_push():
    shard = ParameterShard(CONFIG)
    zeros = np.zeros((1, 4), np.float32)
    shard.pull(np.array([1]))  # creating a row is a change too
    assert shard.version == 1
    assert [shard.push(np.array([1]), zeros, zeros) for _ in range(3)] == [2, 3, 4]


def test_a_delta_export_carries_the_rows_a_pull_created_since_its_version():
    """As the full export does: a snapshot chain must not lack rows its next full snapshot has."""
    shard = ParameterShard(CONFIG)
    shard.pull(np.array([1]))
    since = shard.export().version
    shard.pull(np.array([1, 2]))
    assert shard.export(since).keys.tolist() == [2]
    assert shard.export(shard.version).keys.tolist() == []


def test_push_with_wrong_gradient_shape_names_the_argument():
    with pytest.raises(ValueError, match=r"grad_out must have shape \(1, 4\), got \(1, 3\)"):
        ParameterShard(CONFIG).push(np.array([1]), np.zeros((1, 4)), np.zeros((1, 3)))


def test_export_since_a_version_holds_only_rows_changed_after_it():
    shard = ParameterShard(CONFIG)
    shard.pull(np.array([1, 2, 3]))  # version 1: the rows are created
    shard.push(np.array([1, 2]), _grad([1, 0, 0, 0], [1, 0, 0, 0]), np.zeros((2, 4), np.float32))
    shard.push(np.array([2, 3]), _grad([1, 0, 0, 0], [1, 0, 0, 0]), np.zeros((2, 4), np.float32))
    delta = shard.export(since_version=2)
    assert (delta.version, sorted(delta.keys.tolist()), delta.versions.tolist()) == (3, [2, 3], [3, 3])
    assert sorted(shard.export().keys.tolist()) == [1, 2, 3]


def test_expire_drops_rows_untouched_for_expire_after_s_and_reuses_them():
    shard = ParameterShard(CONFIG)
    zeros = np.zeros((2, 4), np.float32)
    shard.push(np.array([1, 2]), zeros, zeros, np.ones(2, np.int64), ts=1000.0)
    shard.push(np.array([2]), zeros[:1], zeros[:1], np.ones(1, np.int64), ts=1200.0)
    assert shard.expire(now_ts=1250.0).tolist() == [1]
    assert sorted(shard.export().keys.tolist()) == [2]
    assert shard.export(since_version=2).removed.tolist() == [1]
    shard.pull(np.array([9]))
    assert (shard.stats()["rows"], shard.stats()["capacity"] - shard.stats()["free_rows"]) == (2, 2)


def test_a_row_that_only_serves_as_a_negative_expires_while_a_clicked_one_stays():
    shard = ParameterShard(CONFIG)
    keys, grad = np.array([1, 2]), np.full((2, 4), 0.1, np.float32)
    shard.pull(keys)  # created while the shard's clock is unset
    for ts in (1000.0, 1100.0, 1200.0):  # key 1 a context of positive pairs, key 2 only a negative
        shard.apply(RowUpdate(keys[:0], grad[:0], keys, grad, np.zeros(0, np.int64), np.array([1, 0]), ts))
    assert shard.expire(now_ts=1150.0).tolist() == [2]
    assert shard.export().keys.tolist() == [1]
    shard.apply(
        RowUpdate(keys[:0], grad[:0], keys[1:], grad[1:], np.zeros(0, np.int64), np.array([0]), 1300.0)
    )
    assert shard.expire(now_ts=1200.0 + CONFIG.expire_after_s - 1).tolist() == []  # recreated at 1200
    assert sorted(shard.expire(now_ts=1400.0).tolist()) == [1, 2]


def test_removed_since_tells_a_reader_each_expiry_once_and_keeps_only_the_newest(monkeypatch):
    monkeypatch.setattr(shard_module, "REMOVED_KEPT", 3)
    shard = ParameterShard(CONFIG)
    zeros, ones = np.zeros((5, 4), np.float32), np.ones(5, np.int64)
    shard.push(np.arange(5), zeros, zeros, ones, ts=1000.0)
    _, seen = shard.removed_since(None)  # a first call takes the version only
    shard.push(np.arange(3), zeros[:3], zeros[:3], ones[:3], ts=1100.0)
    shard.expire(now_ts=1150.0)  # keys 3 and 4
    keys, seen = shard.removed_since(seen)
    assert (sorted(keys.tolist()), shard.removed_since(seen)[0].tolist()) == ([3, 4], [])
    shard.expire(now_ts=1300.0)  # keys 0, 1, 2: five on record, three kept
    assert sorted(shard.removed_since(0)[0].tolist()) == [0, 1, 2]


def test_expire_does_nothing_when_expiry_is_off():
    shard = ParameterShard(LearnConfig(dim=4))
    shard.push(np.array([1]), np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), ts=0.0)
    assert shard.expire(now_ts=1e9).tolist() == []


def test_set_initial_only_sets_rows_without_positive_pairs():
    shard = ParameterShard(CONFIG)
    shard.push(np.array([1]), np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), np.array([1]))
    vectors = np.full((2, 4), 0.5, dtype=np.float32)
    assert shard.set_initial(np.array([1, 2]), vectors, vectors) == 1
    in_rows, out_rows = shard.pull(np.array([1, 2]))
    assert (in_rows[1].tolist(), out_rows[1].tolist(), out_rows[0].tolist()) == (
        [0.5] * 4,
        [0.5] * 4,
        [0.0] * 4,
    )


def test_tables_grow_past_their_first_capacity():
    shard = ParameterShard(CONFIG)
    keys = np.arange(5000)
    first, _ = shard.pull(keys)
    again, _ = shard.pull(keys)
    assert (shard.stats()["rows"], np.array_equal(first, again)) == (5000, True)


def test_restored_shard_continues_exactly_like_the_original():
    rng = np.random.default_rng(0)
    original = ParameterShard(CONFIG)
    original.push(
        np.arange(50),
        rng.normal(size=(50, 4)).astype(np.float32),
        rng.normal(size=(50, 4)).astype(np.float32),
        ts=10.0,
    )
    original.push(np.arange(40, 60), np.ones((20, 4), np.float32), np.ones((20, 4), np.float32), ts=200.0)
    original.expire(now_ts=150.0)
    resumed = ParameterShard(CONFIG)
    resumed.restore(original.state())
    for shard in (original, resumed):
        shard.push(np.arange(100, 130), np.ones((30, 4), np.float32), np.ones((30, 4), np.float32), ts=300.0)
    a, b = original.export(), resumed.export()
    assert (a.version, a.keys.tolist(), a.counts.tolist()) == (b.version, b.keys.tolist(), b.counts.tolist())
    assert np.array_equal(a.input, b.input) and np.array_equal(a.output, b.output)
    assert original.stats() == resumed.stats()


def test_restore_refuses_a_state_of_another_dimension():
    with pytest.raises(ValueError, match="state has dim 4, config says 8"):
        ParameterShard(LearnConfig(dim=8)).restore(ParameterShard(CONFIG).state())


def test_an_update_whose_pulled_rows_an_expiry_recycled_updates_its_own_keys():
    shard = ParameterShard(CONFIG)
    *_, in_rows, out_rows = shard.pull_for_update([(np.array([1, 2]), np.array([1, 2]))])
    shard.push(
        np.array([9]),
        np.zeros((1, 4), np.float32),
        np.zeros((1, 4), np.float32),
        np.ones(1, np.int64),
        ts=1000.0,
    )
    shard.expire(1000.0)  # rows of 1 and 2 (touched at -inf) are freed...
    others_before, _ = shard.pull(np.array([3, 4]))  # ...and recycled for 3 and 4
    keys, zeros = np.array([1, 2]), np.zeros(2, np.int64)
    grad = _grad([1, 0, 0, 0], [1, 0, 0, 0])
    shard.apply(
        RowUpdate(keys, grad, keys, np.zeros((2, 4), np.float32), zeros, zeros, None, in_rows, out_rows)
    )
    others_after, _ = shard.pull(np.array([3, 4]))
    assert np.array_equal(others_after, others_before)
    assert sorted(shard.export().keys.tolist()) == [1, 2, 3, 4, 9]


def test_an_update_uses_the_rows_its_pull_returned():
    shard = ParameterShard(CONFIG)
    _, _, acc_in, _, in_rows, out_rows = shard.pull_for_update([(np.array([5, 6]), np.array([6, 7]))])
    assert acc_in.tolist() == [CONFIG.adagrad_initial] * 2 and len(set(in_rows) | set(out_rows)) == 3
    shard._index = None  # type: ignore[assignment]  # a lookup would fail: the rows handed back are used
    grad = _grad([1, 0, 0, 0], [0, 0, 0, 0])
    shard.apply(
        RowUpdate(
            np.array([5, 6]),
            grad,
            np.array([6, 7]),
            grad,
            np.array([1, 0]),
            np.array([0, 1]),
            2.0,
            in_rows,
            out_rows,
        )
    )
    assert shard._counts[in_rows].tolist() == [1, 0] and shard._counts[out_rows].tolist() == [0, 1]


def test_pull_for_update_creates_rows_piece_by_piece_in_key_order_whatever_the_split():
    one, two = ParameterShard(CONFIG), ParameterShard(CONFIG)
    one.pull(np.array([1, 2, 3, 4]))
    one.pull(np.array([0, 5]))
    two.pull_for_update([(np.array([4, 2]), np.array([3, 1, 2])), (np.array([5]), np.array([0, 1]))])
    assert one._keys[:6].tolist() == two._keys[:6].tolist() == [1, 2, 3, 4, 0, 5]


def test_a_gradient_whose_squares_underflow_still_counts_as_a_change():
    grad = np.array([[0, 0, 0, 0], [1e-30, 0, 0, 0], [0, -0.0, 0, 0], [0.5, 0, 0, 0]], np.float32)
    values, acc = np.zeros((4, 4), np.float32), np.full(4, 0.25, np.float32)
    changed = adagrad_rows(values, acc, grad, 0.5)
    assert changed.tolist() == [False, True, False, True]
    assert acc[1] == 0.25 and values[1, 0] < 0 and (values[[0, 2]] == 0).all() and acc[0] == acc[2] == 0.25
