"""One skip-gram-with-negative-sampling step on gathered rows: loss and per-row gradients.

The batch is a bipartite graph between input rows (centers) and output rows (contexts and
negatives); every edge carries the coefficient dL/dscore. Collecting those coefficients in one
sparse COO matrix ``A`` (input rows x output rows; repeated edges add up) turns the per-row gradient
sums into two sparse-dense products, ``A @ out_rows`` and ``A.T @ in_rows``, done in compiled code.
Measured against ``np.add.at`` scatter and torch ``index_add_`` on one idle core, this was the
fastest: about 1.0-1.7M pairs/s for 4096-16384 pairs x 64 dims x 5 negatives (CSR; COO, which skips
the CSR conversion's sort, measured 1.7x faster again on the product itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sparse


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

    # np.take gathers rows about twice as fast as fancy indexing (a 41k x 64 gather: 0.15 vs 0.35 ms).
    u = np.take(in_rows, centers, axis=0)
    pos_score = np.einsum("nd,nd->n", u, np.take(out_rows, contexts, axis=0))
    neg_score = np.einsum("nd,nkd->nk", u, np.take(out_rows, negatives, axis=0))
    w = weights.astype(in_rows.dtype, copy=False)
    # As in word2vec, a negative that happens to be the pair's own context is skipped.
    neg_w = w[:, None] * (negatives != contexts[:, None])
    # d/ds of -log s(s) is s(s) - 1; of -log s(-s) is s(s).
    pos_coef = w * (1.0 / (1.0 + np.exp(-pos_score)) - 1.0)
    neg_coef = neg_w / (1.0 + np.exp(-neg_score))

    edge_in = np.concatenate([centers, np.repeat(centers, k)])
    edge_out = np.concatenate([contexts, negatives.ravel()])
    coef = np.concatenate([pos_coef, neg_coef.ravel()]).astype(in_rows.dtype)
    a = sparse.coo_matrix((coef, (edge_in, edge_out)), shape=(len(in_rows), len(out_rows)))
    grad_in = np.asarray(a @ out_rows)
    grad_out = np.asarray(a.T @ in_rows)
    return SgnsGradients(grad_in, grad_out, SgnsLoss(w, pos_score, neg_w, neg_score))
