"""One training step over a batch of pairs of keys: negatives -> pull -> SGNS -> push.

The trainer never owns rows. It talks to a set of shards through two callables that take one
entry per shard (index = shard number, as routed by ``sharding.shard_of``), so the same code runs
against in-process ``ParameterShard`` objects (``local_shard_calls``) and against Ray actors (the
caller issues the per-shard calls in parallel and waits for all of them): one pull and one push per
shard per batch of ``learn.batch_pairs``, whatever the batch size (over Ray a push travels with the
next pull: one call). Keys are laid out grouped by shard, so the pulled rows are concatenated as they
arrive (with their chunks, in one copy) and each shard's gradients are a slice (no copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol

import numpy as np

from recsim_stream.config import LearnConfig
from recsim_stream.sampler import NegativeSampler
from recsim_stream.sgns import SgnsLoss, sgns_step
from recsim_stream.shard import ParameterShard
from recsim_stream.sharding import shard_of


class PairArrays(Protocol):
    """What the trainer reads from a pair batch (pairs.PairBatch): keys, not rows."""

    centers: np.ndarray  # int64 (pairs,)
    contexts: np.ndarray  # int64 (pairs,)
    weights: np.ndarray  # float32 (pairs,)


class RowUpdate(NamedTuple):
    """The arguments of one ``ParameterShard.push`` call, in order: ``shard.push(*update)``."""

    keys: np.ndarray
    grad_in: np.ndarray
    grad_out: np.ndarray
    interactions: np.ndarray
    ts: float | None


# A shard's rows of one table: an array, or a list of row chunks to read as their concatenation (Ray
# ships rows in pieces under 1 MiB, see ray_actors.CHUNK_BYTES).
Rows = np.ndarray | list[np.ndarray]
# pull([keys for shard 0, keys for shard 1, ...]) -> [(input rows, output rows) per shard]; the
# sequence may be lazy (Ray: the calls are issued at once, waited for at the first access)
PullFn = Callable[[list[np.ndarray]], Sequence[tuple[Rows, Rows]]]
# push([update for shard 0, update for shard 1, ...]) -> [new version per shard], or None when the
# push is asynchronous (Ray: acknowledged later at a barrier, see ray_actors.RayShards)
PushFn = Callable[[list[RowUpdate]], Sequence[int] | None]


@dataclass(frozen=True)
class StepResult:
    pairs: int
    rows: int  # distinct keys pulled and pushed
    versions: tuple[int, ...]  # per shard, after the push (empty when the push is asynchronous)
    piece_losses: tuple[SgnsLoss, ...] = ()  # summed only if ``loss`` is read (sgns.SgnsLoss)

    @cached_property
    def loss(self) -> float:
        """Mean over pairs of the weighted SGNS loss, before this step's update."""
        if not self.pairs:
            return 0.0
        total = 0.0
        for piece in self.piece_losses:
            total += piece.value
        return total / self.pairs


def local_shard_calls(shards: Sequence[ParameterShard]) -> tuple[PullFn, PushFn]:
    """Pull/push callables over in-process shards (tests, single-process runs)."""

    def pull(parts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [shard.pull(keys) for shard, keys in zip(shards, parts, strict=True)]

    def push(updates: list[RowUpdate]) -> list[int]:
        return [shard.push(*update) for shard, update in zip(shards, updates, strict=True)]

    return pull, push


class _Prepared(NamedTuple):
    """One batch with its rows requested: keys grouped by shard, pair ends as row numbers."""

    keys: np.ndarray  # distinct keys, shard 0's first, then shard 1's, ...
    bounds: np.ndarray  # shard s owns keys[bounds[s] : bounds[s + 1]]
    centers: np.ndarray  # rows (positions in keys) of each pair's center
    contexts: np.ndarray
    negatives: np.ndarray  # (pairs, negatives)
    weights: np.ndarray
    pulled: Sequence[tuple[Rows, Rows]]  # may resolve lazily (Ray), see PullFn


class SgnsTrainer:
    def __init__(self, config: LearnConfig, sampler: NegativeSampler, pull: PullFn, push: PushFn) -> None:
        self._config = config
        self.sampler = sampler
        self._pull = pull
        self._push = push

    def step(
        self, batch: PairArrays, *, tokens: np.ndarray | None = None, ts: float | None = None
    ) -> StepResult:
        """Train on one batch of pairs, in pieces of about ``learn.batch_pairs``.

        ``tokens``: keys of the events behind this batch, counted by the sampler before negatives
        are drawn (word2vec counts tokens, not pairs). ``ts``: the batch's newest event time, which
        marks the rows as touched (for expiry).

        With ``learn.stale_pulls`` the rows of piece n+1 are requested before piece n's gradients
        are pushed, so the shards serve that pull while this process computes: piece n+1 reads rows
        without piece n's update (asynchronous SGD's usual one-step staleness). Every push has been
        issued when this returns.
        """
        centers = np.asarray(batch.centers, dtype=np.int64)
        contexts = np.asarray(batch.contexts, dtype=np.int64)
        weights = np.asarray(batch.weights, dtype=np.float32)
        n = len(centers)
        if contexts.shape != (n,) or weights.shape != (n,):
            raise ValueError(
                f"SgnsTrainer.step: centers, contexts and weights must have one length, "
                f"got {centers.shape}, {contexts.shape}, {weights.shape}"
            )
        if tokens is not None:
            self.sampler.observe(tokens)
        if n == 0:
            return StepResult(pairs=0, rows=0, versions=())
        # Equal pieces of about batch_pairs: a batch a few pairs over it stays whole rather than
        # paying a round trip for a sliver (and trains exactly as one batch of that size would).
        pieces = max(1, int(n / self._config.batch_pairs + 0.5))
        bounds = [n * i // pieces for i in range(pieces + 1)]
        stale = self._config.stale_pulls

        def prepare(i: int) -> _Prepared:
            piece = slice(bounds[i], bounds[i + 1])
            return self._prepare(centers[piece], contexts[piece], weights[piece])

        losses, rows, versions = [], 0, ()
        ahead = prepare(0)
        for i in range(pieces):
            current = ahead
            more = i + 1 < pieces
            if more and stale:
                ahead = prepare(i + 1)
            piece_loss, pushed = self._train(current, ts)
            if more and not stale:
                ahead = prepare(i + 1)
            losses.append(piece_loss)
            rows += len(current.keys)
            if pushed is not None:
                versions = tuple(int(v) for v in pushed)
        return StepResult(pairs=n, rows=rows, versions=versions, piece_losses=tuple(losses))

    def _prepare(self, centers: np.ndarray, contexts: np.ndarray, weights: np.ndarray) -> _Prepared:
        """Draw negatives, find the distinct keys and request their rows from the shards."""
        n, cfg = len(centers), self._config
        pool, pick = self.sampler.sample_pool(n, cfg.negatives, cfg.negative_pool)
        keys, which = np.unique(np.concatenate([centers, contexts, pool]), return_inverse=True)
        # Group the keys by shard, so each shard's rows and gradients are one contiguous slice:
        # the pulled rows are concatenated as they come, the pushes are views, nothing is re-sorted.
        owner = shard_of(keys, cfg.shards)
        if cfg.shards > 1:
            order = np.concatenate([np.flatnonzero(owner == s) for s in range(cfg.shards)])
            position = np.empty(len(keys), dtype=np.int64)
            position[order] = np.arange(len(keys))
            keys, which = keys[order], position[which]
        bounds = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=cfg.shards))])
        pulled = self._pull([keys[bounds[s] : bounds[s + 1]] for s in range(cfg.shards)])
        return _Prepared(keys, bounds, which[:n], which[n : 2 * n], which[2 * n :][pick], weights, pulled)

    def _train(self, batch: _Prepared, ts: float | None) -> tuple[SgnsLoss, Sequence[int] | None]:
        """SGNS on the pulled rows, then push the gradients; returns (summed loss, push result)."""
        in_rows = stack_rows([rows_in for rows_in, _ in batch.pulled])
        out_rows = stack_rows([rows_out for _, rows_out in batch.pulled])
        grads = sgns_step(in_rows, out_rows, batch.centers, batch.contexts, batch.negatives, batch.weights)
        interactions = np.bincount(batch.centers, minlength=len(batch.keys)) + np.bincount(
            batch.contexts, minlength=len(batch.keys)
        )
        b = batch.bounds
        updates = [
            RowUpdate(
                batch.keys[b[s] : b[s + 1]],
                grads.grad_in[b[s] : b[s + 1]],
                grads.grad_out[b[s] : b[s + 1]],
                interactions[b[s] : b[s + 1]],
                ts,
            )
            for s in range(len(b) - 1)
        ]
        return grads.lazy_loss, self._push(updates)


def stack_rows(parts: list[Rows]) -> np.ndarray:
    """The shards' rows as one table: one copy at most, chunks included."""
    flat = [chunk for part in parts for chunk in (part if isinstance(part, list) else [part])]
    return flat[0] if len(flat) == 1 else np.concatenate(flat)
