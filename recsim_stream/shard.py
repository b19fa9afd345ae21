"""ParameterShard: the input and output rows of the keys routed to one shard (no Ray import).

Rows live in dense float32 tables indexed through a collision-free ``KeyIndex`` (Monolith-style:
a new key gets its own row, tables grow by doubling, expired rows are recycled), so every method
moves whole batches as numpy arrays: one actor call should carry thousands of rows.

Updates are row-wise Adagrad (one squared-gradient accumulator per row and table, as in DLRM): a
row's step shrinks with its own history, not with a global schedule, which suits an endless stream
where items arrive at any time. Not thread-safe: one caller at a time (a Ray actor's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
from numba.types import boolean, float32, int64

from recsim_stream.compiled import FAST_SUMS, reads, writes
from recsim_stream.config import LearnConfig
from recsim_stream.sharding import _GOLDEN, KeyIndex, mix64

State = dict[str, np.ndarray | int | float]

REMOVED_KEPT = 1 << 20  # expirations kept on record (16 MB), newest first (ParameterShard.removed_since)

# Per-row arrays, saved by state(); the vector tables are handled alongside them.
_ROW_FIELDS = ("keys", "acc_in", "acc_out", "counts", "updated", "touched", "live")


class RowUpdate(NamedTuple):
    """One shard's share of a push (``ParameterShard.apply``): input-table gradients for the keys
    that were centers, output-table gradients for the contexts and negatives."""

    in_keys: np.ndarray
    grad_in: np.ndarray  # (len(in_keys), dim)
    out_keys: np.ndarray
    grad_out: np.ndarray  # (len(out_keys), dim)
    in_counts: np.ndarray  # positive pairs each key took part in as a center...
    out_counts: np.ndarray  # ...and as a context
    ts: float | None
    # The shard's rows of the keys, as its pull returned them (it checks them; None = look them up)
    in_rows: np.ndarray | None = None
    out_rows: np.ndarray | None = None


@dataclass(frozen=True)
class ShardExport:
    """Rows of one shard: all of them, or those changed since a version (a delta)."""

    version: int  # the shard version this export is consistent with
    keys: np.ndarray  # int64 (rows,)
    input: np.ndarray  # float32 (rows, dim)
    output: np.ndarray  # float32 (rows, dim)
    counts: np.ndarray  # int64 (rows,): positive pairs each row took part in
    versions: np.ndarray  # int64 (rows,): version of each row's last change
    removed: np.ndarray  # int64 keys expired after since_version (empty for a full export)


def initial_input(keys: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Word2vec's input init, uniform in +-0.5/dim, but a pure function of (key, seed): a row that
    expires and comes back, or lives on another shard after a resharding, starts the same."""
    base = mix64(np.asarray(keys, dtype=np.int64) ^ np.int64(seed))
    lanes = base[:, None] + np.arange(1, dim + 1, dtype=np.uint64)[None, :] * _GOLDEN
    bits = mix64(lanes.view(np.int64)) >> np.uint64(40)  # 24 random bits
    return ((bits.astype(np.float32) / np.float32(1 << 24)) - np.float32(0.5)) / np.float32(dim)


def _records(table: np.ndarray) -> np.ndarray:
    """A C-contiguous 2-d array seen as a 1-d array of opaque rows. numpy copies whole rows as
    single items this way: scattering 16k rows x 64 floats measured 4-8x faster than ``table[rows] = x``."""
    return table.view(np.dtype((np.void, table.shape[1] * table.itemsize))).reshape(-1)


def take_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return _records(table)[rows].view(table.dtype).reshape(len(rows), table.shape[1])


def put_rows(table: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    _records(table)[rows] = _records(np.ascontiguousarray(values, dtype=table.dtype))


def adagrad_rows(values: np.ndarray, acc: np.ndarray, grad: np.ndarray, learning_rate: float) -> np.ndarray:
    """Row-wise Adagrad on gathered rows and their accumulators, in place; returns which rows had a
    nonzero gradient (the others are left exactly as they were). Each changed row's accumulator grows
    by its gradient's mean square, then the row steps against the gradient by ``learning_rate /
    sqrt(accumulator)``. The trainer calls this to replay a push on rows a later batch pulled before
    it; the shard runs the same compiled row step on its tables, so their results agree to the bit."""
    rows = np.arange(len(values), dtype=np.int64)
    return _adagrad_at(values, acc, rows, np.ascontiguousarray(grad, np.float32), np.float32(learning_rate))


@numba.njit(
    writes(boolean)(writes(float32, 2), writes(float32), reads(int64), reads(float32, 2), float32),
    cache=True,
    nogil=True,
    fastmath=FAST_SUMS,
)
def _adagrad_at(table, acc, rows, grad, learning_rate):
    """Adagrad on ``table[rows[i]]`` with ``grad[i]`` (``rows`` distinct), in place, row by row: no
    gathered copies. A row whose gradient is all zero is left as it is; one whose squares underflow
    to zero still steps (its accumulator unchanged)."""
    dim = np.float32(table.shape[1])
    changed = np.zeros(len(rows), dtype=np.bool_)
    for i in range(len(rows)):
        g = grad[i]
        squares = np.float32(0.0)
        for d in range(len(g)):
            squares += g[d] * g[d]
        moved = squares > 0
        if not moved:
            for d in range(len(g)):
                if g[d] != 0:
                    moved = True
                    break
        if moved:
            changed[i] = True
            r = rows[i]
            acc[r] += squares / dim
            step = learning_rate / np.sqrt(acc[r])
            row = table[r]
            for d in range(len(g)):
                row[d] -= step * g[d]
    return changed


class ParameterShard:
    def __init__(self, config: LearnConfig, shard_id: int = 0) -> None:
        self._config = config
        self.shard_id = shard_id
        self._index = KeyIndex()
        self._version = 0
        self._clock = -np.inf  # newest event time seen; rows created by pull() count as touched then
        self._pushes = 0
        self._expired_total = 0
        self._used = 0  # rows ever allocated (high-water mark); free rows below it are recycled
        self._free = np.zeros(0, dtype=np.int64)
        self._removed_keys = np.zeros(0, dtype=np.int64)
        self._removed_versions = np.zeros(0, dtype=np.int64)
        self._allocate(1024)

    @property
    def version(self) -> int:
        """Incremented by every call that changes rows (push, set_initial, expire, and a pull or
        push that creates rows)."""
        return self._version

    def pull(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input and output rows of ``keys`` (float32, len(keys) x dim), creating missing rows."""
        rows = self._rows(np.asarray(keys, dtype=np.int64))
        return take_rows(self._input, rows), take_rows(self._output, rows)

    def pull_for_update(
        self, pieces: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What a trainer reads to update rows, for pieces of (input keys, output keys): input rows
        of the first, output rows of the second, their Adagrad accumulators (to work out what a push
        leaves, ``adagrad_rows``) and their row numbers (handed back with the push to skip the
        lookup), piece after piece. Creates missing rows piece by piece, as separate pulls would."""
        found = [self._rows_of(np.asarray(i, np.int64), np.asarray(o, np.int64)) for i, o in pieces]
        in_rows = np.concatenate([rows for rows, _ in found]) if found else np.zeros(0, np.int64)
        out_rows = np.concatenate([rows for _, rows in found]) if found else np.zeros(0, np.int64)
        return (
            take_rows(self._input, in_rows),
            take_rows(self._output, out_rows),
            self._acc_in[in_rows],
            self._acc_out[out_rows],
            in_rows,
            out_rows,
        )

    def push(
        self,
        keys: np.ndarray,
        grad_in: np.ndarray,
        grad_out: np.ndarray,
        interactions: np.ndarray | None = None,
        ts: float | None = None,
    ) -> int:
        """``apply`` with the same keys in both tables; ``interactions`` counts each key once."""
        keys = np.asarray(keys, dtype=np.int64)
        counts = np.zeros(len(keys), np.int64) if interactions is None else interactions
        return self.apply(RowUpdate(keys, grad_in, keys, grad_out, counts, np.zeros(len(keys), np.int64), ts))

    def apply(self, update: RowUpdate) -> int:
        """Apply loss gradients to rows (duplicate keys summed); returns the new shard version.

        A row whose gradient is all zero in one table keeps that table's row and accumulator (a key
        that only served as a negative has no input gradient). The counts add to each row's count of
        positive pairs; ``ts`` (event time of the batch) marks the rows with a positive pair as
        touched. A row that only served as a negative is not: the sampler goes on drawing an item
        long after its last click, in proportion to its past clicks, so a once-popular item would
        never expire.
        """
        dim = self._config.dim
        sides = []
        for side, keys, grad, counts, hint in (
            ("in", update.in_keys, update.grad_in, update.in_counts, update.in_rows),
            ("out", update.out_keys, update.grad_out, update.out_counts, update.out_rows),
        ):
            keys = np.asarray(keys, dtype=np.int64)
            n = len(keys)
            if grad.shape != (n, dim):
                raise ValueError(
                    f"ParameterShard.apply: grad_{side} must have shape ({n}, {dim}), got {grad.shape}"
                )
            counts = np.asarray(counts, dtype=np.int64)
            if counts.shape != (n,):
                raise ValueError(
                    f"ParameterShard.apply: {side}_counts must have shape ({n},), got {counts.shape}"
                )
            rows = self._hinted_rows(keys, hint)
            if self._has_duplicates(rows):
                rows, which = np.unique(rows, return_inverse=True)
                grad, counts = self._sum_by(which, len(rows), grad), self._sum_by(which, len(rows), counts)
            sides.append((rows, grad, counts))
        (in_rows, grad_in, in_counts), (out_rows, grad_out, out_counts) = sides
        changed_in = self._adagrad(self._input, self._acc_in, in_rows, grad_in)
        changed_out = self._adagrad(self._output, self._acc_out, out_rows, grad_out)
        self._counts[in_rows] += in_counts
        self._counts[out_rows] += out_counts
        self._version += 1
        self._pushes += 1
        self._updated[in_rows[changed_in | (in_counts > 0)]] = self._version
        self._updated[out_rows[changed_out | (out_counts > 0)]] = self._version
        if update.ts is not None:
            ts = float(update.ts)
            self._clock = max(self._clock, ts)
            for rows, counts in ((in_rows, in_counts), (out_rows, out_counts)):
                positive = rows[counts > 0]
                self._touched[positive] = np.maximum(self._touched[positive], ts)
        return self._version

    def set_initial(
        self,
        keys: np.ndarray,
        in_vectors: np.ndarray,
        out_vectors: np.ndarray | None = None,
        ts: float | None = None,
    ) -> int:
        """Cold start: set rows of keys that have not learned yet (no positive pair so far), e.g.
        from the content tower. Rows with a count are left alone. Returns the number of rows set."""
        keys = np.asarray(keys, dtype=np.int64)
        dim = self._config.dim
        if in_vectors.shape != (len(keys), dim):
            raise ValueError(
                f"ParameterShard.set_initial: in_vectors must have shape ({len(keys)}, {dim}), got {in_vectors.shape}"
            )
        if out_vectors is not None and out_vectors.shape != in_vectors.shape:
            raise ValueError(
                f"ParameterShard.set_initial: out_vectors must have shape {in_vectors.shape}, got {out_vectors.shape}"
            )
        rows = self._rows(keys)
        fresh = self._counts[rows] == 0
        if not fresh.any():
            return 0
        self._version += 1
        self._input[rows[fresh]] = in_vectors[fresh]
        if out_vectors is not None:
            self._output[rows[fresh]] = out_vectors[fresh]
        self._updated[rows[fresh]] = self._version
        if ts is not None:
            self._clock = max(self._clock, float(ts))
            self._touched[rows[fresh]] = np.maximum(self._touched[rows[fresh]], float(ts))
        return int(np.unique(rows[fresh]).size)

    def expire(self, now_ts: float) -> np.ndarray:
        """Drop rows untouched (event time) for more than expire_after_s; returns their keys.
        A row is touched when it is created, given an initial vector, or takes part in a positive
        pair. Its row is recycled for new keys. Does nothing when expire_after_s is 0."""
        if self._config.expire_after_s <= 0:
            return np.zeros(0, dtype=np.int64)
        cutoff = float(now_ts) - self._config.expire_after_s
        used = slice(0, self._used)
        rows = np.flatnonzero(self._live[used] & (self._touched[used] < cutoff))
        if len(rows) == 0:
            return np.zeros(0, dtype=np.int64)
        keys = self._keys[rows].copy()
        self._version += 1
        self._index.remove(keys)
        self._live[rows] = False
        self._free = np.concatenate([self._free, rows])
        # The newest REMOVED_KEPT expirations stay on record for ``removed_since`` and delta exports.
        self._removed_keys = np.concatenate([self._removed_keys, keys])[-REMOVED_KEPT:]
        versions = np.full(len(keys), self._version)
        self._removed_versions = np.concatenate([self._removed_versions, versions])[-REMOVED_KEPT:]
        self._expired_total += len(keys)
        return keys

    def removed_since(self, version: int | None) -> tuple[np.ndarray, int]:
        """Keys expired after ``version`` (none for None: a first call only takes the version), and
        the version to ask from next. How an updater that does not expire learns what the expiring
        one dropped, so that its sampler forgets them too; one that asks more than REMOVED_KEPT
        expirations late misses the oldest."""
        if version is None:
            return np.zeros(0, dtype=np.int64), self._version
        return self._removed_keys[self._removed_versions > version].copy(), self._version

    def forget_removed(self, up_to_version: int) -> None:
        """Drop the record of expirations at or before a version (once every delta reader has them)."""
        keep = self._removed_versions > up_to_version
        self._removed_keys, self._removed_versions = self._removed_keys[keep], self._removed_versions[keep]

    def export(self, since_version: int | None = None) -> ShardExport:
        """All live rows, or only those changed after ``since_version`` plus the keys expired since."""
        used = slice(0, self._used)
        live = self._live[used]
        if since_version is None:
            rows = np.flatnonzero(live)
            removed = np.zeros(0, dtype=np.int64)
        else:
            rows = np.flatnonzero(live & (self._updated[used] > since_version))
            removed = self._removed_keys[self._removed_versions > since_version]
        return ShardExport(
            version=self._version,
            keys=self._keys[rows].copy(),
            input=self._input[rows],
            output=self._output[rows],
            counts=self._counts[rows].copy(),
            versions=self._updated[rows].copy(),
            removed=removed.copy(),
        )

    def stats(self) -> dict[str, int | float]:
        return {
            "shard": self.shard_id,
            "rows": len(self._index),
            "capacity": len(self._keys),
            "free_rows": len(self._free) + len(self._keys) - self._used,
            "version": self._version,
            "pushes": self._pushes,
            "expired_total": self._expired_total,
            "newest_event_ts": float(self._clock),
            "table_bytes": int(self._input.nbytes + self._output.nbytes),
        }

    def state(self) -> State:
        used = slice(0, self._used)
        state: State = {name: getattr(self, f"_{name}")[used].copy() for name in _ROW_FIELDS}
        state.update(
            input=self._input[used].copy(),
            output=self._output[used].copy(),
            free=self._free.copy(),
            removed_keys=self._removed_keys.copy(),
            removed_versions=self._removed_versions.copy(),
            dim=self._config.dim,
            version=self._version,
            clock=float(self._clock),
            pushes=self._pushes,
            expired_total=self._expired_total,
        )
        return state

    def restore(self, state: State) -> None:
        if int(state["dim"]) != self._config.dim:
            raise ValueError(
                f"ParameterShard.restore: state has dim {state['dim']}, config says {self._config.dim}"
            )
        used = len(state["keys"])
        self._used = 0
        self._allocate(max(1024, used))
        self._used = used
        for name in (*_ROW_FIELDS, "input", "output"):
            getattr(self, f"_{name}")[:used] = state[name]
        self._free = np.asarray(state["free"], dtype=np.int64).copy()
        self._removed_keys = np.asarray(state["removed_keys"], dtype=np.int64).copy()
        self._removed_versions = np.asarray(state["removed_versions"], dtype=np.int64).copy()
        self._version = int(state["version"])
        self._clock = float(state["clock"])
        self._pushes = int(state["pushes"])
        self._expired_total = int(state["expired_total"])
        live_rows = np.flatnonzero(self._live[:used])
        self._index = KeyIndex(2 * len(live_rows))
        self._index.insert(self._keys[live_rows], live_rows)

    # -- internals -------------------------------------------------------------------------------

    def _rows(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, creating rows for missing keys."""
        return self._rows_of(keys)[0]

    def _rows_of(self, *key_arrays: np.ndarray) -> list[np.ndarray]:
        """Row of each key (one array per argument), creating rows for missing keys: in ascending
        key order across all the arrays, so the layout does not depend on how they are split."""
        found = [self._index.get(np.asarray(keys, dtype=np.int64)) for keys in key_arrays]
        missing = [rows < 0 for rows in found]
        if any(m.any() for m in missing):
            new_keys = np.unique(
                np.concatenate([keys[m] for keys, m in zip(key_arrays, missing, strict=True)])
            )
            # New rows are a change: a delta export since the current version must carry them, as
            # the full export does (a snapshot chain would otherwise lack rows its next full has).
            self._version += 1
            new_rows = self._take_rows(len(new_keys))
            self._index.insert(new_keys, new_rows)
            self._keys[new_rows] = new_keys
            put_rows(self._input, new_rows, initial_input(new_keys, self._config.dim, self._config.seed))
            put_rows(self._output, new_rows, np.zeros((len(new_rows), self._config.dim), np.float32))
            self._acc_in[new_rows] = self._config.adagrad_initial
            self._acc_out[new_rows] = self._config.adagrad_initial
            self._counts[new_rows] = 0
            self._updated[new_rows] = self._version
            self._touched[new_rows] = self._clock
            self._live[new_rows] = True
            for keys, rows, m in zip(key_arrays, found, missing, strict=True):
                rows[m] = new_rows[np.searchsorted(new_keys, keys[m])]
        return found

    def _hinted_rows(self, keys: np.ndarray, hint: np.ndarray | None) -> np.ndarray:
        """The rows of ``keys``: ``hint`` (a pull's answer) when they still hold them (an expiry or a
        restore in between may have recycled them: then look the keys up again)."""
        if hint is not None and len(hint) == len(keys):
            hint = np.asarray(hint, dtype=np.int64)
            valid = len(hint) == 0 or (hint.min() >= 0 and hint.max() < self._used)
            if valid and self._live[hint].all() and np.array_equal(self._keys[hint], keys):
                return hint
        return self._rows(keys)

    def _take_rows(self, n: int) -> np.ndarray:
        recycled = self._free[:n]
        self._free = self._free[n:]
        extra = n - len(recycled)
        if self._used + extra > len(self._keys):
            capacity = len(self._keys)
            while self._used + extra > capacity:
                capacity *= 2
            self._allocate(capacity)
        fresh = np.arange(self._used, self._used + extra)
        self._used += extra
        return np.concatenate([recycled, fresh])

    def _allocate(self, capacity: int) -> None:
        """(Re)size every per-row array to ``capacity``, keeping the first ``_used`` rows."""
        dim, used = self._config.dim, self._used

        def grow(old: np.ndarray | None, shape: tuple[int, ...], dtype: type) -> np.ndarray:
            new = np.zeros(shape, dtype=dtype)
            if old is not None and used:
                new[:used] = old[:used]
            return new

        old = {name: getattr(self, f"_{name}", None) for name in (*_ROW_FIELDS, "input", "output", "mark")}
        self._keys = grow(old["keys"], (capacity,), np.int64)
        self._input = grow(old["input"], (capacity, dim), np.float32)
        self._output = grow(old["output"], (capacity, dim), np.float32)
        self._acc_in = grow(old["acc_in"], (capacity,), np.float32)
        self._acc_out = grow(old["acc_out"], (capacity,), np.float32)
        self._counts = grow(old["counts"], (capacity,), np.int64)
        self._updated = grow(old["updated"], (capacity,), np.int64)
        self._touched = grow(old["touched"], (capacity,), np.float64)
        self._live = grow(old["live"], (capacity,), bool)
        self._mark = np.zeros(capacity, dtype=np.int64)  # scratch for duplicate detection

    def _has_duplicates(self, rows: np.ndarray) -> bool:
        """O(n) duplicate test: write each position at its row; a duplicate row keeps only its last."""
        positions = np.arange(len(rows))
        self._mark[rows] = positions
        return bool((self._mark[rows] != positions).any())

    @staticmethod
    def _sum_by(which: np.ndarray, groups: int, values: np.ndarray) -> np.ndarray:
        total = np.zeros((groups, *values.shape[1:]), dtype=values.dtype)
        np.add.at(total, which, values)
        return total

    def _adagrad(self, table: np.ndarray, acc: np.ndarray, rows: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Row-wise Adagrad on ``table[rows]``; returns which of ``rows`` had a nonzero gradient."""
        grad = np.ascontiguousarray(grad, np.float32)
        return _adagrad_at(table, acc, rows, grad, np.float32(self._config.learning_rate))
