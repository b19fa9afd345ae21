"""One skip-gram-with-negative-sampling step on gathered rows: loss and per-row gradients.

The batch is a bipartite graph between input rows (centers) and output rows (contexts and
negatives); every edge carries the coefficient dL/dscore. One compiled pass over the pairs (numba)
scores each edge and adds its share to both rows' gradient sums. It replaced two sparse-dense
products over a COO matrix of the coefficients (scipy), which were themselves measured 2-4x faster
than ``np.add.at`` or torch ``index_add_``: the compiled pass reads each row once per edge and makes
no temporaries, 1.6-1.8x faster again on eval-sized pieces (BENCHMARKS.md, eighteenth session).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
from numba.types import float32, float64, int64, void

from recsim_stream.compiled import FAST_SUMS, reads, writes


@dataclass(frozen=True)
class SgnsLoss:
    """A step's loss, computed when first read: eval never reads it, and its libm ``logaddexp`` per
    pair and negative was a fifth of a step (0.43 of 2.2 ms at 8,192 pairs)."""

    weights: np.ndarray  # (pairs,)
    pos_score: np.ndarray  # (pairs,)
    neg_weights: np.ndarray  # (pairs, negatives), 0 where a negative is the pair's context
    neg_score: np.ndarray  # (pairs, negatives)

    @cached_property
    def value(self) -> float:
        """Sum over pairs of weight * (-log s(u.v) - sum_k log s(-u.n_k))."""
        positive = self.weights @ np.logaddexp(0.0, -self.pos_score)
        return float(positive + (self.neg_weights * np.logaddexp(0.0, self.neg_score)).sum())


@dataclass(frozen=True)
class SgnsGradients:
    """Loss and gradients of one step; gradients are of the loss, so descend along them."""

    grad_in: np.ndarray  # (input rows, dim), dtype of the rows, summed per row
    grad_out: np.ndarray  # (output rows, dim), summed per row
    lazy_loss: SgnsLoss

    @property
    def loss(self) -> float:
        return self.lazy_loss.value


def _signatures() -> list:
    """float32 rows as the trainer has them, float64 for tests and tools (compiled.py)."""
    index, index_2d = reads(int64), reads(int64, 2)
    return [
        void(
            reads(f, 2),
            reads(f, 2),
            index,
            index,
            index_2d,
            reads(f),
            writes(f, 2),
            writes(f, 2),
            writes(f),
            writes(f, 2),
        )
        for f in (float32, float64)
    ]


@numba.njit(cache=True, inline="always", fastmath=FAST_SUMS)
def _dot(u, v):
    total = u.dtype.type(0.0)
    for d in range(len(u)):
        total += u[d] * v[d]
    return total


@numba.njit(cache=True, inline="always", fastmath=FAST_SUMS)
def _both(coef, u, gu, v, gv):
    """An edge's share of both gradients: coef * v to u's row, coef * u to v's."""
    for d in range(len(u)):
        gu[d] += coef * v[d]
        gv[d] += coef * u[d]


@numba.njit(_signatures(), cache=True, nogil=True, error_model="numpy", fastmath=FAST_SUMS)
def _edges(in_rows, out_rows, centers, contexts, negatives, weights, grad_in, grad_out, pos_score, neg_score):
    """Scores of every pair's positive and negative edges, and each edge's coefficient times the other
    end's row added to both rows' gradients (the positive edge first, then the negatives in order)."""
    one = in_rows.dtype.type(1.0)
    for i in range(len(centers)):
        center, context, weight = centers[i], contexts[i], weights[i]
        u, gu = in_rows[center], grad_in[center]
        score = _dot(u, out_rows[context])
        pos_score[i] = score
        # d/ds of -log s(s) is s(s) - 1
        _both(weight * (one / (one + np.exp(-score)) - one), u, gu, out_rows[context], grad_out[context])
        for j in range(negatives.shape[1]):
            row = negatives[i, j]
            score = _dot(u, out_rows[row])
            neg_score[i, j] = score
            if row != context:  # as word2vec: the pair's own context is not a negative
                _both(weight / (one + np.exp(-score)), u, gu, out_rows[row], grad_out[row])  # -log s(-s)


def _check(name: str, array: np.ndarray, shape: tuple[int, ...], rows: int) -> None:
    if array.shape != shape:
        raise ValueError(f"sgns_step: {name} must have shape {shape}, got {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= rows):
        raise ValueError(f"sgns_step: {name} must index rows 0..{rows - 1}, got {array.min()}..{array.max()}")


def sgns_step(
    in_rows: np.ndarray,
    out_rows: np.ndarray,
    centers: np.ndarray,
    contexts: np.ndarray,
    negatives: np.ndarray,
    weights: np.ndarray,
) -> SgnsGradients:
    """Loss and gradients for pairs (centers[i] -> contexts[i]) with negatives[i, :].

    ``centers`` index ``in_rows``; ``contexts`` and ``negatives`` (pairs x K) index ``out_rows``;
    ``weights`` scale each pair's whole term (positive and its negatives). A negative equal to its
    pair's context (same output row) is skipped, as word2vec does.
    """
    n = len(centers)
    dim = in_rows.shape[1]
    if out_rows.ndim != 2 or out_rows.shape[1] != dim:
        raise ValueError(f"sgns_step: out_rows must have shape (rows, {dim}), got {out_rows.shape}")
    k = negatives.shape[1] if negatives.ndim == 2 else -1
    _check("centers", centers, (n,), len(in_rows))
    _check("contexts", contexts, (n,), len(out_rows))
    _check("negatives", negatives, (n, k), len(out_rows))
    if weights.shape != (n,):
        raise ValueError(f"sgns_step: weights must have shape ({n},), got {weights.shape}")

    # The compiled pass takes C-contiguous arrays of one float type and int64 indices.
    in_rows = np.ascontiguousarray(in_rows)
    out_rows = np.ascontiguousarray(out_rows, dtype=in_rows.dtype)
    centers, contexts, negatives = (np.ascontiguousarray(a, np.int64) for a in (centers, contexts, negatives))
    w = np.ascontiguousarray(weights, dtype=in_rows.dtype)
    grad_in, grad_out = np.zeros_like(in_rows), np.zeros_like(out_rows)
    pos_score = np.empty(n, dtype=in_rows.dtype)
    neg_score = np.empty((n, k), dtype=in_rows.dtype)
    _edges(in_rows, out_rows, centers, contexts, negatives, w, grad_in, grad_out, pos_score, neg_score)
    # As in word2vec, a negative that happens to be the pair's own context is skipped.
    neg_w = w[:, None] * (negatives != contexts[:, None])
    return SgnsGradients(grad_in, grad_out, SgnsLoss(w, pos_score, neg_w, neg_score))
