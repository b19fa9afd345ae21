"""Streaming negative sampler: unigram^power over counts that grow with the stream.

The incremental unigram table of Kaji & Kobayashi (2017, "Incremental Skip-gram Model with
Negative Sampling"): a fixed-size table of keys whose share of slots tracks count^power. When a
key's count rises from c to c + d, its weight rises by F = (c + d)^power - c^power and the total by
the batch's sum of F; the key then takes F * slots / total random slots of the table in use
(stochastically rounded; distinct slots). In expectation that leaves every key's share exactly at its new
count^power / total, with work proportional to the batch, never to the catalogue. Sampling is a
uniform draw from the table.

The table in use grows with the keys, ``SLOTS_PER_KEY`` slots per distinct key up to
``learn.sampler_table_size``, by doubling: a copy of itself appended leaves every share as it was.
While few keys are known a batch is a large share of the total and rewrites a large part of the table;
a table sized for the keys known keeps that work small (a full-size table from the start was
rewritten ~3.5 times over by REES46's first 17 batches, BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np

from recsim_stream.config import LearnConfig
from recsim_stream.sharding import KeyIndex

State = dict[str, np.ndarray | int | float]

# Slots per distinct key the table grows to keep (the next power of two). On 100 Zipf keys the table's
# total-variation distance from count^0.75 was 0.014 at 256, 0.019 at 128 and 0.009 at full size
# (BENCHMARKS.md, fifteenth session): fewer slots a key means coarser shares for the rare keys.
SLOTS_PER_KEY = 256
MIN_SLOTS = 1024


def rng_state(rng: np.random.Generator) -> np.ndarray:
    """A PCG64 generator's full state as six uint64 (no pickle)."""
    s = rng.bit_generator.state
    if s["bit_generator"] != "PCG64":
        raise ValueError(f"expected a PCG64 generator, got {s['bit_generator']}")
    low = (1 << 64) - 1
    st, inc = s["state"]["state"], s["state"]["inc"]
    parts = [st >> 64, st & low, inc >> 64, inc & low, s["has_uint32"], s["uinteger"]]
    return np.array(parts, dtype=np.uint64)


def rng_from_state(parts: np.ndarray) -> np.random.Generator:
    p = [int(x) for x in np.asarray(parts, dtype=np.uint64)]
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (p[0] << 64) | p[1], "inc": (p[2] << 64) | p[3]},
        "has_uint32": p[4],
        "uinteger": p[5],
    }
    return rng


class NegativeSampler:
    """Draws keys with probability proportional to count^power, counts updated per batch."""

    def __init__(self, config: LearnConfig) -> None:
        self._power = config.sampler_power
        self._table = np.zeros(config.sampler_table_size, dtype=np.int64)
        self._filled = 0
        self._total = 0.0  # sum over keys of count^power
        self._index = KeyIndex()
        self._keys = np.zeros(1024, dtype=np.int64)
        self._counts = np.zeros(1024, dtype=np.int64)
        self._size = 0
        self._rng = np.random.default_rng(config.seed)

    @property
    def size(self) -> int:
        """Distinct keys observed."""
        return self._size

    def count(self, keys: np.ndarray) -> np.ndarray:
        """Observed count of each key (0 for unseen keys)."""
        pos = self._index.get(np.asarray(keys, dtype=np.int64))
        return np.where(pos >= 0, self._counts[np.maximum(pos, 0)], 0)

    def observe(self, keys: np.ndarray) -> None:
        """Count one occurrence per element of ``keys`` (repeats count repeatedly)."""
        keys, added = np.unique(np.asarray(keys, dtype=np.int64), return_counts=True)
        if len(keys) == 0:
            return
        pos = self._positions(keys)
        old = self._counts[pos]
        self._counts[pos] = old + added
        gain = (old + added).astype(np.float64) ** self._power - old.astype(np.float64) ** self._power
        self._total += float(gain.sum())
        wanted = self._slots_for(self._size)
        if self._filled == 0:  # the first batch fills the table in proportion
            fresh = np.repeat(keys, self._stochastic_round(gain * (wanted / self._total)))
            fresh = self._rng.permutation(fresh)[:wanted]
            self._table[: len(fresh)] = fresh
            self._filled = len(fresh)
            return
        self._grow(wanted)
        slots = self._filled
        fresh = np.repeat(keys, self._stochastic_round(gain * (slots / self._total)))
        if len(fresh) > slots:  # rounding up when this batch outweighs everything before it
            fresh = self._rng.permutation(fresh)[:slots]
        # Distinct slots, so a key's share is exact in expectation; which slots does not matter
        # because sampling and later replacements treat every slot alike.
        self._table[self._rng.choice(slots, len(fresh), replace=False, shuffle=False)] = fresh

    def _slots_for(self, keys: int) -> int:
        """Table slots for ``keys`` distinct keys: a power of two, within [MIN_SLOTS, table size]."""
        wanted = 1 << max(0, SLOTS_PER_KEY * keys - 1).bit_length()
        return min(len(self._table), max(MIN_SLOTS, wanted))

    def _grow(self, slots: int) -> None:
        """Double the table in use while it stays within ``slots`` (at most the array): every key keeps
        its share exactly."""
        table = self._table
        while 2 * self._filled <= slots:
            filled = self._filled
            table[filled : 2 * filled] = table[:filled]
            self._filled = 2 * filled

    def sample(self, n: int) -> np.ndarray:
        """``n`` keys drawn independently from count^power."""
        if self._filled == 0:
            raise ValueError("NegativeSampler.sample: no key observed yet; call observe() first")
        return self._table[self._rng.integers(0, self._filled, n)]

    def sample_pool(self, pairs: int, negatives: int, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Negatives for ``pairs`` pairs as (pool keys, pairs x negatives indices into the pool).

        Each pair draws uniformly from a pool itself drawn from count^power, so the marginal
        distribution is unchanged while a batch touches at most ``pool_size`` distinct negative rows.
        ``pool_size`` 0 draws every negative independently (the pool is then pairs * negatives long).
        """
        if pool_size == 0:
            pool = self.sample(pairs * negatives)
            return pool, np.arange(pairs * negatives, dtype=np.int64).reshape(pairs, negatives)
        pool = self.sample(pool_size)
        return pool, self._rng.integers(0, pool_size, (pairs, negatives))

    def state(self) -> State:
        return {
            "table": self._table[: self._filled].copy(),
            "table_size": len(self._table),
            "total": self._total,
            "keys": self._keys[: self._size].copy(),
            "counts": self._counts[: self._size].copy(),
            "rng": rng_state(self._rng),
        }

    def restore(self, state: State) -> None:
        table = np.asarray(state["table"], dtype=np.int64)
        if int(state["table_size"]) != len(self._table):
            raise ValueError(
                f"NegativeSampler.restore: state has table_size {state['table_size']}, "
                f"config says {len(self._table)}"
            )
        if table.ndim != 1 or len(table) > len(self._table):
            raise ValueError(
                f"NegativeSampler.restore: state's table has shape {table.shape}; it must be one row of at "
                f"most table_size ({len(self._table)}) keys"
            )
        self._table[:] = 0
        self._table[: len(table)] = table
        self._filled = len(table)
        self._total = float(state["total"])
        keys = np.asarray(state["keys"], dtype=np.int64)
        self._size = len(keys)
        self._keys = np.zeros(max(1024, len(keys)), dtype=np.int64)
        self._counts = np.zeros_like(self._keys)
        self._keys[: self._size] = keys
        self._counts[: self._size] = np.asarray(state["counts"], dtype=np.int64)
        self._index = KeyIndex(2 * len(keys))
        self._index.insert(keys, np.arange(self._size))
        self._rng = rng_from_state(np.asarray(state["rng"]))

    def _positions(self, keys: np.ndarray) -> np.ndarray:
        """Position of each (distinct) key in the count arrays, adding unseen keys at the end."""
        pos = self._index.get(keys)
        new = pos < 0
        n_new = int(new.sum())
        if n_new:
            if self._size + n_new > len(self._keys):
                capacity = len(self._keys)
                while self._size + n_new > capacity:
                    capacity *= 2
                self._keys = np.resize(self._keys, capacity)
                self._counts = np.concatenate(
                    [self._counts, np.zeros(capacity - len(self._counts), np.int64)]
                )
            fresh = np.arange(self._size, self._size + n_new)
            self._keys[fresh] = keys[new]
            self._counts[fresh] = 0
            self._index.insert(keys[new], fresh)
            pos[new] = fresh
            self._size += n_new
        return pos

    def _stochastic_round(self, x: np.ndarray) -> np.ndarray:
        whole = np.floor(x)
        return (whole + (self._rng.random(len(x)) < x - whole)).astype(np.int64)
