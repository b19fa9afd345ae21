"""Stable item keys, shard routing, and a vectorised key -> slot index.

Keys are the first 8 bytes of blake2b(item id) read as a signed int64: the same on every process,
machine and Python version (Python's ``hash()`` is salted per process). Routing mixes the key again
(splitmix64's finaliser) so that keys made some other way (small test integers, sequential ids)
still spread evenly over shards.

``KeyIndex`` maps int64 keys to int64 values (row numbers) with open addressing in numpy arrays,
so a batch of thousands of keys is looked up or inserted in one compiled pass (numba) instead of a
Python loop. It never collides two keys (unlike a fixed hashed table) and grows by doubling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numba
import numpy as np
from numba.types import Tuple, int64

from recsim_stream.compiled import reads, writes

_EMPTY = -1
_TOMBSTONE = -2
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def item_key(item_id: str) -> int:
    """Stable signed 64-bit key of an item id."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def item_keys(item_ids: Iterable[str]) -> np.ndarray:
    """``item_key`` of many ids at once, as an int64 array in the same order."""
    blob = b"".join(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest() for i in item_ids)
    return np.frombuffer(blob, dtype="<i8").astype(np.int64)


def mix64(keys: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of int64 keys, as uint64: a well-mixed, stable function of the key."""
    z = np.asarray(keys, dtype=np.int64).view(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def shard_of(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard (0..n_shards-1) that owns each key; depends only on the key and n_shards."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return (mix64(keys) % np.uint64(n_shards)).astype(np.int64)


def split_by_shard(keys: np.ndarray, n_shards: int) -> list[np.ndarray]:
    """Per shard, the positions in ``keys`` it owns (ascending), so that
    ``out[parts[s]] = answer_from_shard_s`` gathers the answers back in the original order."""
    owner = shard_of(keys, n_shards)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(n_shards + 1))
    return [order[bounds[s] : bounds[s + 1]] for s in range(n_shards)]


def distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for int64 keys: the distinct keys ascending, and each
    key's position among them. Hashes the keys to find the distinct ones, then sorts only those: on
    the trainer's batches (a few thousand keys, a fifth of them distinct) 3x faster than sorting all
    (BENCHMARKS.md, eighteenth session)."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    capacity = 1 << max(4, (2 * len(keys)).bit_length())  # load factor at most one half
    return _distinct(keys, (mix64(keys) & np.uint64(capacity - 1)).astype(np.int64), capacity)


class KeyIndex:
    """int64 key -> non-negative int64 value, open addressing with linear probing.

    The load factor (live keys plus tombstones) stays at or below one half, so probe chains are short
    and every vectorised pass resolves most of the remaining keys.
    """

    def __init__(self, capacity: int = 1024) -> None:
        capacity = max(16, 1 << (int(capacity) - 1).bit_length())
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._values = np.full(capacity, _EMPTY, dtype=np.int64)
        self._live = 0
        self._tombstones = 0

    def __len__(self) -> int:
        return self._live

    @property
    def capacity(self) -> int:
        return len(self._keys)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, or -1 where the key is absent."""
        home = (mix64(keys) & np.uint64(self.capacity - 1)).astype(np.int64)
        return _find(self._keys, self._values, keys, home)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """Value of each key, -1 where absent."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        slots = self._slots(keys)
        return np.where(slots >= 0, self._values[np.maximum(slots, 0)], -1)

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add keys that are absent and distinct (the caller checked with ``get``)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        values = np.ascontiguousarray(values, dtype=np.int64)
        if len(keys) == 0:
            return
        if (self._live + self._tombstones + len(keys)) * 2 > self.capacity:
            self._rebuild(self._live + len(keys))
        home = (mix64(keys) & np.uint64(self.capacity - 1)).astype(np.int64)
        self._tombstones -= _place(self._keys, self._values, keys, values, home)
        self._live += len(keys)

    def remove(self, keys: np.ndarray) -> None:
        """Drop the keys that are present; absent keys are ignored."""
        slots = self._slots(np.ascontiguousarray(keys, dtype=np.int64))
        slots = np.unique(slots[slots >= 0])
        self._values[slots] = _TOMBSTONE
        self._live -= len(slots)
        self._tombstones += len(slots)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys, values) currently stored, in slot order."""
        live = self._values >= 0
        return self._keys[live].copy(), self._values[live].copy()

    def _rebuild(self, live_after: int) -> None:
        keys, values = self.items()
        capacity = self.capacity
        while live_after * 3 > capacity:  # leave headroom so the next inserts do not rebuild again
            capacity *= 2
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._values = np.full(capacity, _EMPTY, dtype=np.int64)
        self._live = 0
        self._tombstones = 0
        self.insert(keys, values)


# Probing one key after another in compiled loops (compiled.py): 3-15x faster than probing every key
# of a batch in rounds of numpy passes (BENCHMARKS.md, eighteenth session).


@numba.njit(writes(int64)(reads(int64), reads(int64), reads(int64), reads(int64)), cache=True, nogil=True)
def _find(slot_keys, slot_values, keys, home):
    """Slot of each key (linear probing from its home slot), -1 where absent."""
    mask = len(slot_keys) - 1
    slots = np.full(len(keys), -1, dtype=np.int64)
    for i in range(len(keys)):
        p = home[i]
        while slot_values[p] != _EMPTY:
            if slot_values[p] >= 0 and slot_keys[p] == keys[i]:
                slots[i] = p
                break
            p = (p + 1) & mask
    return slots


@numba.njit(
    int64(writes(int64), writes(int64), reads(int64), reads(int64), reads(int64)), cache=True, nogil=True
)
def _place(slot_keys, slot_values, keys, values, home):
    """Put each (absent, distinct) key in the first free or tombstoned slot from its home slot, in
    order; returns how many tombstones were reused."""
    mask = len(slot_keys) - 1
    reused = 0
    for i in range(len(keys)):
        p = home[i]
        while slot_values[p] >= 0:
            p = (p + 1) & mask
        if slot_values[p] == _TOMBSTONE:
            reused += 1
        slot_keys[p] = keys[i]
        slot_values[p] = values[i]
    return reused


@numba.njit(Tuple((writes(int64), writes(int64)))(reads(int64), reads(int64), int64), cache=True, nogil=True)
def _distinct(keys, home, capacity):
    mask = capacity - 1
    slot_keys = np.empty(capacity, dtype=np.int64)
    slot_ids = np.full(capacity, -1, dtype=np.int64)
    found = np.empty(len(keys), dtype=np.int64)  # first-seen number of each key's distinct value
    firsts = np.empty(len(keys), dtype=np.int64)
    n = 0
    for i in range(len(keys)):
        p = home[i]
        while slot_ids[p] >= 0 and slot_keys[p] != keys[i]:
            p = (p + 1) & mask
        if slot_ids[p] < 0:
            slot_ids[p], slot_keys[p] = n, keys[i]
            firsts[n] = keys[i]
            n += 1
        found[i] = slot_ids[p]
    order = np.argsort(firsts[:n])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    for i in range(len(keys)):
        found[i] = rank[found[i]]
    return firsts[:n][order], found
