"""One training step over a batch of pairs of keys: negatives -> pull -> SGNS -> push.

The trainer never owns rows. It talks to a set of shards through callables that take one entry per
shard (index = shard number, as routed by ``sharding.shard_of``), so the same code runs against
in-process ``ParameterShard`` objects (``local_shard_calls``) and against Ray actors (the caller
issues the per-shard calls in parallel and waits for all of them): about one call per shard per
batch of ``learn.batch_pairs``, a push together with a later batch's pull (``ExchangeFn``). Keys
are laid out grouped by shard, so the pulled rows are concatenated as they arrive (with their
chunks, in one copy) and each shard's gradients are a slice (no copy).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol

import numpy as np

from recsim_stream.config import LearnConfig
from recsim_stream.sampler import NegativeSampler
from recsim_stream.sgns import SgnsGradients, SgnsLoss, sgns_step
from recsim_stream.shard import ParameterShard, RowUpdate, adagrad_rows, put_rows, take_rows
from recsim_stream.sharding import distinct, shard_of


class PairArrays(Protocol):
    """What the trainer reads from a pair batch (pairs.PairBatch): keys, not rows."""

    centers: np.ndarray  # int64 (pairs,)
    contexts: np.ndarray  # int64 (pairs,)
    weights: np.ndarray  # float32 (pairs,)


# A shard's rows of one table: an array, or a list of row chunks to read as their concatenation (Ray
# ships rows in pieces under 1 MiB, see ray_actors.CHUNK_BYTES).
Rows = np.ndarray | list[np.ndarray]


class PulledRows(NamedTuple):
    """A shard's answer to a pull (``ParameterShard.pull_for_update``)."""

    inputs: Rows  # input rows of the in-keys
    outputs: Rows  # output rows of the out-keys
    acc_in: np.ndarray  # their Adagrad accumulators
    acc_out: np.ndarray
    in_rows: np.ndarray  # the shard's row of each key, handed back with the push
    out_rows: np.ndarray


# Per shard, the (input keys, output keys) of each piece of a pull.
PullParts = list[list[tuple[np.ndarray, np.ndarray]]]
# pull(parts) -> [PulledRows per shard, the pieces' rows one after another]; the sequence may be lazy
# (Ray: the calls are issued at once, waited for at the first access)
PullFn = Callable[[PullParts], Sequence[PulledRows]]
# push([[update for shard 0, for shard 1, ...] per piece, in order]) -> [new version per shard], or
# None when the push is asynchronous (Ray: acknowledged later at a barrier, see ray_actors.RayShards)
PushFn = Callable[[list[list[RowUpdate]]], Sequence[int] | None]
# exchange(updates, parts): push, then pull, in one call per shard -> (push's result, pull's result)
ExchangeFn = Callable[[list[list[RowUpdate]], PullParts], tuple[Sequence[int] | None, Sequence[PulledRows]]]
# Pieces whose pushes, and whose pulls, travel in one call per shard: a call costs ~1 ms of CPU across
# the processes whatever it carries (BENCHMARKS.md, training speed).
PIECES_PER_CALL = 2


@dataclass(frozen=True)
class StepResult:
    pairs: int
    rows: int  # input and output rows trained
    versions: tuple[int, ...]  # per shard, after the push (empty when the push is asynchronous)
    piece_losses: tuple[SgnsLoss, ...] = ()  # computed only if ``loss`` is read (sgns.SgnsLoss)

    @cached_property
    def loss(self) -> float:
        """Mean per pair of the weighted SGNS loss of the step's largest piece, before its update: a
        sample of the step (all of it when it is one piece), not a trailing sliver. The updater
        smooths it over steps for its metric; computing every piece's loss took 1.6% of its loop
        (py-spy, BENCHMARKS.md)."""
        sample = max(self.piece_losses, key=lambda piece: len(piece.weights), default=None)
        if sample is None or not len(sample.weights):
            return 0.0
        return sample.value / len(sample.weights)


def local_shard_calls(shards: Sequence[ParameterShard]) -> tuple[PullFn, PushFn]:
    """Pull/push callables over in-process shards (tests, single-process runs)."""

    def pull(parts: PullParts) -> list[PulledRows]:
        return [
            PulledRows(*shard.pull_for_update(pieces)) for shard, pieces in zip(shards, parts, strict=True)
        ]

    def push(batches: list[list[RowUpdate]]) -> list[int]:
        versions: list[int] = []
        for updates in batches:
            versions = [shard.apply(update) for shard, update in zip(shards, updates, strict=True)]
        return versions

    return pull, push


class _Side(NamedTuple):
    """One table's keys in a piece, grouped by shard (shard s owns keys[bounds[s] : bounds[s + 1]],
    ascending): each shard's rows and gradients are one contiguous slice, so the pulled rows are
    concatenated as they come and the pushes are views."""

    keys: np.ndarray
    bounds: np.ndarray

    def shard_keys(self, s: int) -> np.ndarray:
        return self.keys[self.bounds[s] : self.bounds[s + 1]]


def _side(raw: np.ndarray, shards: int) -> tuple[_Side, np.ndarray]:
    """The side of ``raw`` keys, and each raw key's position in it."""
    keys, which = distinct(raw)
    owner = shard_of(keys, shards)
    if shards > 1:
        order = np.concatenate([np.flatnonzero(owner == s) for s in range(shards)])
        position = np.empty(len(keys), dtype=np.int64)
        position[order] = np.arange(len(keys))
        keys, which = keys[order], position[which]
    return _Side(keys, np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=shards))])), which


def _shared(mine: _Side, theirs: _Side) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``mine``, positions in ``theirs``) of the keys both sides hold."""
    here, there = [], []
    for s in range(len(mine.bounds) - 1):
        a, b = mine.shard_keys(s), theirs.shard_keys(s)
        at = np.minimum(np.searchsorted(b, a), max(len(b) - 1, 0))
        found = b[at] == a if len(b) else np.zeros(len(a), dtype=bool)
        here.append(mine.bounds[s] + np.flatnonzero(found))
        there.append(theirs.bounds[s] + at[found])
    return np.concatenate(here), np.concatenate(there)


class Segment(NamedTuple):
    """Pairs up to ``end`` of a batch (from the previous segment's end), to train exactly as a
    ``step`` call of their own would: ``tokens`` counted by the sampler first, rows touched at ``ts``."""

    end: int
    tokens: np.ndarray
    ts: float | None


class _Piece(NamedTuple):
    """One piece of a batch: its keys per table and its pairs as positions in them."""

    inputs: _Side  # the centers' keys
    outputs: _Side  # the contexts' and negatives' keys
    centers: np.ndarray  # position in inputs.keys of each pair's center
    contexts: np.ndarray  # position in outputs.keys of each pair's context
    negatives: np.ndarray  # (pairs, negatives), positions in outputs.keys
    weights: np.ndarray
    ts: float | None


class _Table(NamedTuple):
    """One table's rows of a piece as the shards hold them before its push, with their Adagrad
    accumulators and the shards' row numbers."""

    values: np.ndarray
    acc: np.ndarray
    rows: np.ndarray


class _Carried(NamedTuple):
    """Rows of a piece (and their accumulators) as its push leaves them, for a later piece."""

    values: np.ndarray
    acc: np.ndarray


class _Trained(NamedTuple):
    """A piece with the tables it read and its gradients: what a later piece pulled before this
    piece's push needs to replay it."""

    piece: _Piece
    inputs: _Table
    outputs: _Table
    grads: SgnsGradients


class _GroupPull(NamedTuple):
    """One pull for several pieces: each shard's answer holds the pieces' rows one after another."""

    rows: Sequence[PulledRows]  # per shard; may resolve lazily (Ray)
    parts: PullParts  # what was asked: per shard, each piece's (input keys, output keys)

    def span(self, shard: int, piece: int, side: int) -> slice:
        """Where ``piece``'s rows of one table (0: input, 1: output) lie in ``shard``'s answer."""
        asked = self.parts[shard]
        start = sum(len(keys[side]) for keys in asked[:piece])
        return slice(start, start + len(asked[piece][side]))


class SgnsTrainer:
    def __init__(
        self,
        config: LearnConfig,
        sampler: NegativeSampler,
        pull: PullFn,
        push: PushFn,
        exchange: ExchangeFn | None = None,
    ) -> None:
        """``exchange``: a push and the next pull in one call per shard (Ray: half the calls);
        without it, a push then a pull."""
        self._config = config
        self.sampler = sampler
        self._pull = pull
        self._push = push
        self._exchange = exchange or (lambda updates, parts: (push(updates), pull(parts)))

    def step(
        self,
        batch: PairArrays,
        *,
        tokens: np.ndarray | None = None,
        ts: float | None = None,
        segments: Sequence[Segment] | None = None,
    ) -> StepResult:
        """Train on one batch of pairs, in pieces of about ``learn.batch_pairs``.

        ``tokens``: keys of the events behind this batch, counted by the sampler before negatives
        are drawn (word2vec counts tokens, not pairs). ``ts``: the batch's newest event time, which
        marks the rows as touched (for expiry). ``segments`` instead: the batch is several calls'
        worth, each trained as its own call would be (the learner batches calls this way).

        Only the rows a piece reads move: input rows of its centers, output rows of its contexts
        and negatives. Pieces travel in groups of ``PIECES_PER_CALL``, pipelined two deep: a group's
        rows are requested with the push of the group before last (one exchange per shard), so the
        shards serve them while this process computes the group between (over Ray). That stays
        exact: a piece's rows that pieces pushed after its pull also train are replaced, in order,
        by those pieces' rows as their pushes leave them (the shards' own Adagrad step,
        ``shard.adagrad_rows``, replayed); the others were last changed by pushes the shards applied
        before the pull. The result is the pieces' one after another, to the bit. Every push has
        been issued when this returns.
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
        if segments is None:
            segments = [Segment(n, np.zeros(0, np.int64) if tokens is None else tokens, ts)]
        elif (
            not segments
            or segments[-1].end != n
            or any(a.end > b.end for a, b in itertools.pairwise(segments))
        ):
            raise ValueError(f"SgnsTrainer.step: segment ends must rise to the batch's {n} pairs")
        # Equal pieces of about batch_pairs per segment: a segment a few pairs over it stays whole
        # rather than paying a round trip for a sliver (and trains as one batch of that size would).
        bounds: list[tuple[int, int, int]] = []  # (first pair, end, segment)
        start = 0
        for k, segment in enumerate(segments):
            size = segment.end - start
            count = max(1, int(size / self._config.batch_pairs + 0.5)) if size else 0
            bounds += [(start + size * i // count, start + size * (i + 1) // count, k) for i in range(count)]
            start = segment.end
        observed = 0  # segments whose tokens the sampler has counted

        def observe(through: int) -> None:
            nonlocal observed
            for segment in segments[observed : through + 1]:
                self.sampler.observe(segment.tokens)
            observed = max(observed, through + 1)

        def plan(i: int) -> _Piece:
            lo, hi, k = bounds[i]
            observe(k)
            return self._plan(centers[lo:hi], contexts[lo:hi], weights[lo:hi], segments[k].ts)

        # Pieces travel in groups: group g+2's pull goes with group g's push, so group g+1's
        # pieces, and the earlier pieces of a piece's own group, are the ones pushed after its pull.
        groups = [
            range(i, min(i + PIECES_PER_CALL, len(bounds))) for i in range(0, len(bounds), PIECES_PER_CALL)
        ]
        pieces: list[_Piece] = []
        group_pulls: dict[int, _GroupPull] = {}

        def request(g: int) -> PullParts:
            """Plan group g's pieces: per shard, each piece's (input keys, output keys)."""
            pieces.extend(plan(i) for i in groups[g])
            return [
                [(pieces[i].inputs.shard_keys(s), pieces[i].outputs.shard_keys(s)) for i in groups[g]]
                for s in range(self._config.shards)
            ]

        for g in range(min(2, len(groups))):
            parts = request(g)
            group_pulls[g] = _GroupPull(self._pull(parts), parts)
        losses, rows, versions = [], 0, ()
        trained: dict[int, _Trained] = {}
        for g, members in enumerate(groups):
            pulled = group_pulls.pop(g)
            since = groups[g - 1].start if g else 0  # pieces pushed after this group's pull
            updates = []
            for k, i in enumerate(members):
                piece = pieces[i]
                inputs, outputs = self._tables(piece, pulled, k, [trained[q] for q in range(since, i)])
                grads = sgns_step(
                    inputs.values,
                    outputs.values,
                    piece.centers,
                    piece.contexts,
                    piece.negatives,
                    piece.weights,
                )
                updates.append(self._updates(piece, inputs, outputs, grads))
                trained[i] = _Trained(piece, inputs, outputs, grads)
                losses.append(grads.lazy_loss)
                rows += len(piece.inputs.keys) + len(piece.outputs.keys)
            for q in range(since, members.start):
                del trained[q]  # no later piece was pulled before its push
            if g + 2 < len(groups):
                parts = request(g + 2)
                pushed, next_rows = self._exchange(updates, parts)
                group_pulls[g + 2] = _GroupPull(next_rows, parts)
            else:
                pushed = self._push(updates)
            if pushed is not None:
                versions = tuple(int(v) for v in pushed)
        observe(len(segments) - 1)  # trailing segments without pairs
        return StepResult(pairs=n, rows=rows, versions=versions, piece_losses=tuple(losses))

    def _plan(
        self, centers: np.ndarray, contexts: np.ndarray, weights: np.ndarray, ts: float | None
    ) -> _Piece:
        """Draw negatives and find the distinct keys of each table."""
        n, cfg = len(centers), self._config
        pool, pick = self.sampler.sample_pool(n, cfg.negatives, cfg.negative_pool)
        inputs, which_in = _side(centers, cfg.shards)
        outputs, which_out = _side(np.concatenate([contexts, pool]), cfg.shards)
        return _Piece(inputs, outputs, which_in, which_out[:n], which_out[n:][pick], weights, ts)

    def _tables(
        self, piece: _Piece, pulled: _GroupPull, k: int, pushed_since: list[_Trained]
    ) -> tuple[_Table, _Table]:
        """Piece ``k`` of a group pull: its input and output tables (waited for here), where the
        rows of the pieces pushed after the pull, in their order, replace the pulled ones."""
        tables = []
        for side in (0, 1):  # the input table, the output table
            answer = [(p, pulled.span(s, k, side)) for s, p in enumerate(pulled.rows)]
            table = _Table(
                _writable(stack_rows([_rows_in((p.inputs, p.outputs)[side], span) for p, span in answer])),
                np.concatenate([(p.acc_in, p.acc_out)[side][span] for p, span in answer]),
                np.concatenate([(p.in_rows, p.out_rows)[side][span] for p, span in answer]),
            )
            keys = (piece.inputs, piece.outputs)[side]
            for earlier in pushed_since:
                here, there = _shared(keys, (earlier.piece.inputs, earlier.piece.outputs)[side])
                if len(here):
                    grad = (earlier.grads.grad_in, earlier.grads.grad_out)[side]
                    carried = self._carried((earlier.inputs, earlier.outputs)[side], grad, there)
                    put_rows(table.values, here, carried.values)
                    table.acc[here] = carried.acc
            tables.append(table)
        return tables[0], tables[1]

    def _updates(
        self, piece: _Piece, inputs: _Table, outputs: _Table, grads: SgnsGradients
    ) -> list[RowUpdate]:
        """One update per shard: its slices of keys, gradients, counts and row numbers."""
        in_counts = np.bincount(piece.centers, minlength=len(piece.inputs.keys))
        out_counts = np.bincount(piece.contexts, minlength=len(piece.outputs.keys))
        updates = []
        for s in range(self._config.shards):
            i = slice(piece.inputs.bounds[s], piece.inputs.bounds[s + 1])
            o = slice(piece.outputs.bounds[s], piece.outputs.bounds[s + 1])
            updates.append(
                RowUpdate(
                    piece.inputs.keys[i],
                    grads.grad_in[i],
                    piece.outputs.keys[o],
                    grads.grad_out[o],
                    in_counts[i],
                    out_counts[o],
                    piece.ts,
                    inputs.rows[i],
                    outputs.rows[o],
                )
            )
        return updates

    def _carried(self, table: _Table, grad: np.ndarray, source: np.ndarray) -> _Carried:
        """Rows ``source`` of ``table`` as the push of ``grad`` leaves them on the shards (the shard's
        own ``adagrad_rows``)."""
        values, acc = take_rows(table.values, source), table.acc[source]
        adagrad_rows(values, acc, grad[source], self._config.learning_rate)
        return _Carried(values, acc)


def _rows_in(rows: Rows, span: slice) -> list[np.ndarray]:
    """Rows ``span`` of a table sent as a list of chunks (or an array), as views."""
    chunks = rows if isinstance(rows, list) else [rows]
    picked, offset = [], 0
    for chunk in chunks:
        lo, hi = max(span.start - offset, 0), min(span.stop - offset, len(chunk))
        if lo < hi:
            picked.append(chunk[lo:hi])
        offset += len(chunk)
    return picked or [chunks[0][:0]]


def _writable(rows: np.ndarray) -> np.ndarray:
    """``rows``, or a copy when it is a read-only view (one chunk of a Ray object)."""
    return rows if rows.flags.writeable else rows.copy()


def stack_rows(parts: list[Rows]) -> np.ndarray:
    """The shards' rows as one table: one copy at most, chunks included."""
    flat = [chunk for part in parts for chunk in (part if isinstance(part, list) else [part])]
    return flat[0] if len(flat) == 1 else np.concatenate(flat)
