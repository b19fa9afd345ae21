"""Streaming negative sampler: unigram^power over counts that grow with the stream.

Each observed key has a weight count^power, held in a Fenwick (binary indexed) tree: a batch of
counts changes its keys' weights level by level up the tree (log2 of the capacity, 11 for 2,000
keys, 20 for a million), and each draw descends it, both in compiled loops (numba). The work
follows the batch, never the catalogue, and the draws follow count^power exactly.

It replaced the incremental unigram table of Kaji & Kobayashi (2017), whose slots a key takes in
proportion to its weight. That table is exact only in expectation, and while a stream is young each
batch is a large share of all counts, so a batch rewrote a large part of the table: on REES46's
17,434 events, 1.9M random distinct slots of a 1M-slot table, 70-100 ms of the learner's 0.7 s
(BENCHMARKS.md, sixteenth session).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.types import float64, int64, void

from recsim_stream.compiled import reads, writes
from recsim_stream.config import LearnConfig
from recsim_stream.sharding import KeyIndex, distinct

State = dict[str, np.ndarray | int | float]

MIN_CAPACITY = 1024  # keys the arrays hold before they first double (a power of two)


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


def fenwick_tree(weights: np.ndarray) -> np.ndarray:
    """The Fenwick tree of ``weights`` (length a power of two), 1-based: node i holds the sum of
    weights (i - lowbit(i), i]. Built from prefix sums in one pass."""
    prefix = np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])
    nodes = np.arange(1, len(weights) + 1)
    return np.concatenate([[0.0], prefix[nodes] - prefix[nodes - (nodes & -nodes)]])


class NegativeSampler:
    """Draws keys with probability proportional to count^power, counts updated per batch."""

    def __init__(self, config: LearnConfig) -> None:
        self._power = config.sampler_power
        self._index = KeyIndex()
        self._keys = np.zeros(MIN_CAPACITY, dtype=np.int64)
        self._counts = np.zeros(MIN_CAPACITY, dtype=np.int64)
        self._tree = fenwick_tree(np.zeros(MIN_CAPACITY))  # of count^power, by position
        self._size = 0
        self._drawable = 0
        self._rng = np.random.default_rng(config.seed)

    @property
    def size(self) -> int:
        """Distinct keys observed."""
        return self._size

    @property
    def drawable(self) -> int:
        """Distinct keys with a count: observed and not forgotten since."""
        return self._drawable

    def count(self, keys: np.ndarray) -> np.ndarray:
        """Observed count of each key (0 for unseen keys)."""
        pos = self._index.get(np.asarray(keys, dtype=np.int64))
        return np.where(pos >= 0, self._counts[np.maximum(pos, 0)], 0)

    def observe(self, keys: np.ndarray) -> None:
        """Count one occurrence per element of ``keys`` (repeats count repeatedly)."""
        keys, which = distinct(keys)
        added = np.bincount(which, minlength=len(keys))
        if len(keys) == 0:
            return
        pos = self._positions(keys)
        old = self._counts[pos]
        self._drawable += int(np.count_nonzero(old == 0))
        self._counts[pos] = old + added
        _fenwick_add(self._tree, pos + 1, self._weights(old + added) - self._weights(old))

    def forget(self, keys: np.ndarray) -> None:
        """Stop drawing ``keys`` (items expired from the shards): their counts drop to 0, and a later
        observation counts from 1 again. Left in, an expired item would be drawn as a negative in
        proportion to its past clicks, and its row, recreated by the pull, would never stay gone.
        Their positions stay (24 bytes each)."""
        pos = self._index.get(np.asarray(keys, dtype=np.int64))
        pos = np.unique(pos[pos >= 0])
        pos = pos[self._counts[pos] > 0]
        if len(pos):
            _fenwick_add(self._tree, pos + 1, -self._weights(self._counts[pos]))
            self._counts[pos] = 0
            self._drawable -= len(pos)

    def sample(self, n: int) -> np.ndarray:
        """``n`` keys drawn independently from count^power."""
        if self._size == 0:
            raise ValueError("NegativeSampler.sample: no key observed yet; call observe() first")
        tree, capacity = self._tree, len(self._counts)
        pos = _fenwick_descend(tree, self._rng.random(n) * tree[capacity])
        # pos keys have all their mass before the draw: it is key ``pos`` (kept in range against rounding)
        return self._keys[np.minimum(pos, self._size - 1)]

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
            "keys": self._keys[: self._size].copy(),
            "counts": self._counts[: self._size].copy(),
            "tree": self._tree.copy(),  # as the updates left it: a restored sampler draws the same
            "rng": rng_state(self._rng),
        }

    def restore(self, state: State) -> None:
        """Continue from ``state()``. A state without a tree (a checkpoint of the earlier table
        sampler) rebuilds it from the counts: the same distribution, other draws."""
        keys = np.asarray(state["keys"], dtype=np.int64)
        counts = np.asarray(state["counts"], dtype=np.int64)
        if keys.ndim != 1 or counts.shape != keys.shape or (counts < 0).any():
            raise ValueError(
                f"NegativeSampler.restore: expected one count >= 0 per key (0: forgotten), got keys {keys.shape} "
                f"and counts {counts.shape}"
            )
        capacity = _capacity_for(len(keys))
        self._size = len(keys)
        self._drawable = int(np.count_nonzero(counts))
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._counts = np.zeros(capacity, dtype=np.int64)
        self._keys[: self._size] = keys
        self._counts[: self._size] = counts
        tree = state.get("tree")
        if tree is None:
            self._tree = fenwick_tree(self._weights(self._counts))
        else:
            self._tree = np.asarray(tree, dtype=np.float64).copy()
            if self._tree.shape != (capacity + 1,):
                raise ValueError(
                    f"NegativeSampler.restore: the tree of {len(keys)} keys has {capacity + 1} nodes, "
                    f"got shape {self._tree.shape}"
                )
        self._index = KeyIndex(2 * len(keys))
        self._index.insert(keys, np.arange(self._size))
        self._rng = rng_from_state(np.asarray(state["rng"]))

    def _weights(self, counts: np.ndarray) -> np.ndarray:
        """count^power (0 for an unused position), as the tree holds it."""
        return counts.astype(np.float64) ** self._power

    def _positions(self, keys: np.ndarray) -> np.ndarray:
        """Position of each (distinct) key in the arrays, adding unseen keys at the end (and doubling
        the arrays, the tree rebuilt, when they are full)."""
        pos = self._index.get(keys)
        new = pos < 0
        n_new = int(new.sum())
        if n_new:
            capacity = _capacity_for(self._size + n_new)
            if capacity > len(self._keys):
                grow = capacity - len(self._keys)
                self._keys = np.concatenate([self._keys, np.zeros(grow, np.int64)])
                self._counts = np.concatenate([self._counts, np.zeros(grow, np.int64)])
                self._tree = fenwick_tree(self._weights(self._counts))
            fresh = np.arange(self._size, self._size + n_new)
            self._keys[fresh] = keys[new]
            self._index.insert(keys[new], fresh)
            pos[new] = fresh
            self._size += n_new
        return pos


def _capacity_for(keys: int) -> int:
    """The arrays' length for ``keys`` keys: a power of two, at least MIN_CAPACITY."""
    return max(MIN_CAPACITY, 1 << max(0, keys - 1).bit_length())


# The tree's two walks, compiled (compiled.py). Each does the float64 arithmetic of the numpy passes it replaced in the same order, so the tree and
# the draws are the same to the bit.


@numba.njit(void(writes(float64), reads(int64), writes(float64)), cache=True, nogil=True)
def _fenwick_add(tree, nodes, delta):
    """Add ``delta[i]`` to every node above 1-based position ``nodes[i]``, a level at a time: at each
    level in the order of ``nodes`` (as ``np.add.at`` did), so sums round as they did. ``delta`` is
    overwritten (scratch)."""
    capacity = len(tree) - 1
    node = nodes.copy()
    pending = len(node)
    while pending:
        kept = 0
        for i in range(pending):
            tree[node[i]] += delta[i]
            nxt = node[i] + (node[i] & -node[i])
            if nxt <= capacity:
                node[kept] = nxt
                delta[kept] = delta[i]
                kept += 1
        pending = kept


@numba.njit(writes(int64)(reads(float64), reads(float64)), cache=True, nogil=True)
def _fenwick_descend(tree, left):
    """For each draw's mass ``left[i]``: how many keys lie wholly before it (the drawn position)."""
    capacity = len(tree) - 1
    out = np.zeros(len(left), dtype=np.int64)
    for i in range(len(left)):
        pos, mass, step = 0, left[i], capacity // 2
        while step:  # pos is a multiple of 2 * step below capacity: pos + step is a node
            node = tree[pos + step]
            if node <= mass:
                mass -= node
                pos += step
            step //= 2
        out[i] = pos
    return out
