"""One training step over a batch of pairs of keys: negatives -> pull -> SGNS -> push.

The trainer never owns rows. It talks to a set of shards through two callables that take one
entry per shard (index = shard number, as routed by ``sharding.shard_of``), so the same code runs
against in-process ``ParameterShard`` objects (``local_shard_calls``) and against Ray actors (the
caller issues the per-shard calls in parallel and waits for all of them): one pull and one push per
shard per batch, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from recsim_stream.config import LearnConfig
from recsim_stream.sampler import NegativeSampler
from recsim_stream.sgns import sgns_step
from recsim_stream.shard import ParameterShard
from recsim_stream.sharding import split_by_shard


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


# pull([keys for shard 0, keys for shard 1, ...]) -> [(input rows, output rows) per shard]
PullFn = Callable[[list[np.ndarray]], Sequence[tuple[np.ndarray, np.ndarray]]]
# push([update for shard 0, update for shard 1, ...]) -> [new version per shard], or None when the
# push is asynchronous (Ray: acknowledged later at a barrier, see ray_actors.RayShards)
PushFn = Callable[[list[RowUpdate]], Sequence[int] | None]


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over pairs of the weighted SGNS loss, before this step's update
    pairs: int
    rows: int  # distinct keys pulled and pushed
    versions: tuple[int, ...]  # per shard, after the push (empty when the push is asynchronous)


def local_shard_calls(shards: Sequence[ParameterShard]) -> tuple[PullFn, PushFn]:
    """Pull/push callables over in-process shards (tests, single-process runs)."""

    def pull(parts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [shard.pull(keys) for shard, keys in zip(shards, parts, strict=True)]

    def push(updates: list[RowUpdate]) -> list[int]:
        return [shard.push(*update) for shard, update in zip(shards, updates, strict=True)]

    return pull, push


class SgnsTrainer:
    def __init__(self, config: LearnConfig, sampler: NegativeSampler, pull: PullFn, push: PushFn) -> None:
        self._config = config
        self.sampler = sampler
        self._pull = pull
        self._push = push

    def step(
        self, batch: PairArrays, *, tokens: np.ndarray | None = None, ts: float | None = None
    ) -> StepResult:
        """Train on one batch of pairs.

        ``tokens``: keys of the events behind this batch, counted by the sampler before negatives
        are drawn (word2vec counts tokens, not pairs). ``ts``: the batch's newest event time, which
        marks the rows as touched (for expiry).
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
            return StepResult(loss=0.0, pairs=0, rows=0, versions=())
        cfg = self._config
        pool, pick = self.sampler.sample_pool(n, cfg.negatives, cfg.negative_pool)
        keys, which = np.unique(np.concatenate([centers, contexts, pool]), return_inverse=True)
        center_rows, context_rows = which[:n], which[n : 2 * n]
        negative_rows = which[2 * n :][pick]

        parts = split_by_shard(keys, cfg.shards)
        pulled = self._pull([keys[p] for p in parts])
        # Rows arrive grouped by shard; one gather puts them back in key order (faster than scattering).
        back = np.argsort(np.concatenate(parts))
        in_rows = np.concatenate([rows_in for rows_in, _ in pulled])[back]
        out_rows = np.concatenate([rows_out for _, rows_out in pulled])[back]

        grads = sgns_step(in_rows, out_rows, center_rows, context_rows, negative_rows, weights)
        interactions = np.bincount(center_rows, minlength=len(keys)) + np.bincount(
            context_rows, minlength=len(keys)
        )
        updates = [
            RowUpdate(keys[p], grads.grad_in[p], grads.grad_out[p], interactions[p], ts) for p in parts
        ]
        pushed = self._push(updates)
        versions = () if pushed is None else tuple(int(v) for v in pushed)
        return StepResult(loss=grads.loss / n, pairs=n, rows=len(keys), versions=versions)
