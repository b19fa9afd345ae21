import numpy as np
import pytest

from recsim_stream.sgns import sgns_step


def _loss(in_rows, out_rows, centers, contexts, negatives, weights) -> float:
    return sgns_step(in_rows, out_rows, centers, contexts, negatives, weights).loss


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    in_rows, out_rows = rng.normal(0, 0.5, (4, 3)), rng.normal(0, 0.5, (5, 3))
    centers, contexts = np.array([0, 1, 1, 3]), np.array([2, 0, 4, 2])
    negatives = np.array([[1, 3], [4, 4], [2, 0], [0, 1]])
    weights = np.array([1.0, 0.5, 2.0, 1.0])
    grads = sgns_step(in_rows, out_rows, centers, contexts, negatives, weights)
    eps = 1e-6
    for table, grad in ((in_rows, grads.grad_in), (out_rows, grads.grad_out)):
        numeric = np.zeros_like(table)
        for idx in np.ndindex(table.shape):
            table[idx] += eps
            up = _loss(in_rows, out_rows, centers, contexts, negatives, weights)
            table[idx] -= 2 * eps
            down = _loss(in_rows, out_rows, centers, contexts, negatives, weights)
            table[idx] += eps
            numeric[idx] = (up - down) / (2 * eps)
        assert np.abs(grad - numeric).max() < 1e-6


def test_loss_of_zero_vectors_is_one_plus_k_times_log_two_per_pair():
    grads = sgns_step(
        np.zeros((2, 4)),
        np.zeros((3, 4)),
        np.array([0, 1]),
        np.array([1, 2]),
        np.array([[0, 2], [0, 1]]),
        np.ones(2),
    )
    assert grads.loss == pytest.approx(6 * np.log(2))


def test_negative_equal_to_the_context_is_skipped():
    grads = sgns_step(
        np.ones((1, 2)), np.ones((2, 2)), np.array([0]), np.array([1]), np.array([[1, 1]]), np.ones(1)
    )
    assert grads.loss == pytest.approx(np.log1p(np.exp(-2.0)))


def test_loss_decreases_on_planted_pairs_with_plain_gradient_descent():
    rng = np.random.default_rng(1)
    items, clusters = 40, 4
    in_rows = rng.uniform(-0.05, 0.05, (items, 8))
    out_rows = np.zeros((items, 8))
    centers = rng.integers(0, items, 2000)
    contexts = (centers // 10) * 10 + rng.integers(0, 10, 2000)
    negatives = rng.integers(0, items, (2000, 5))
    weights = np.ones(2000)
    first = None
    for _ in range(50):
        grads = sgns_step(in_rows, out_rows, centers, contexts, negatives, weights)
        first = grads.loss if first is None else first
        in_rows -= 0.01 * grads.grad_in
        out_rows -= 0.01 * grads.grad_out
    assert grads.loss < 0.7 * first
    assert clusters == len(np.unique(centers // 10))


def test_index_out_of_range_names_the_argument_and_the_range():
    with pytest.raises(ValueError, match="contexts must index rows 0..1, got 2..2"):
        sgns_step(
            np.zeros((2, 2)), np.zeros((2, 2)), np.array([0]), np.array([2]), np.array([[0]]), np.ones(1)
        )


def test_weights_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match=r"weights must have shape \(1,\), got \(2,\)"):
        sgns_step(
            np.zeros((2, 2)), np.zeros((2, 2)), np.array([0]), np.array([1]), np.array([[0]]), np.ones(2)
        )
