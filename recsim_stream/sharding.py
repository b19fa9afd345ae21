"""Stable item keys, shard routing, and a vectorised key -> slot index.

Keys are the first 8 bytes of blake2b(item id) read as a signed int64: the same on every process,
machine and Python version (Python's ``hash()`` is salted per process). Routing mixes the key again
(splitmix64's finaliser) so that keys made some other way (small test integers, sequential ids)
still spread evenly over shards.

``KeyIndex`` maps int64 keys to int64 values (row numbers) with open addressing in numpy arrays,
so a batch of thousands of keys is looked up or inserted in a few vectorised passes instead of a
Python loop. It never collides two keys (unlike a fixed hashed table) and grows by doubling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

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
        mask = np.uint64(self.capacity - 1)
        pos = (mix64(keys) & mask).astype(np.int64)
        slots = np.full(len(keys), -1, dtype=np.int64)
        pending = np.arange(len(keys))
        while len(pending):
            p = pos[pending]
            values = self._values[p]
            found = (values >= 0) & (self._keys[p] == keys[pending])
            slots[pending[found]] = p[found]
            keep = ~found & (values != _EMPTY)
            pending = pending[keep]
            pos[pending] = (p[keep] + 1) & (self.capacity - 1)
        return slots

    def get(self, keys: np.ndarray) -> np.ndarray:
        """Value of each key, -1 where absent."""
        keys = np.asarray(keys, dtype=np.int64)
        slots = self._slots(keys)
        return np.where(slots >= 0, self._values[np.maximum(slots, 0)], -1)

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add keys that are absent and distinct (the caller checked with ``get``)."""
        keys = np.asarray(keys, dtype=np.int64)
        values = np.asarray(values, dtype=np.int64)
        if len(keys) == 0:
            return
        if (self._live + self._tombstones + len(keys)) * 2 > self.capacity:
            self._rebuild(self._live + len(keys))
        mask = self.capacity - 1
        pos = (mix64(keys) & np.uint64(mask)).astype(np.int64)
        pending = np.arange(len(keys))
        while len(pending):
            p = pos[pending]
            free = self._values[p] < 0
            # Keys racing for the same free slot: the first wins, the others probe on.
            _, first = np.unique(p[free], return_index=True)
            winners = pending[free][first]
            slots = pos[winners]
            self._tombstones -= int(np.count_nonzero(self._values[slots] == _TOMBSTONE))
            self._keys[slots] = keys[winners]
            self._values[slots] = values[winners]
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            pos[pending] = (pos[pending] + 1) & mask
        self._live += len(keys)

    def remove(self, keys: np.ndarray) -> None:
        """Drop the keys that are present; absent keys are ignored."""
        slots = self._slots(np.asarray(keys, dtype=np.int64))
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
