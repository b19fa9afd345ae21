"""Re-route parameter-server rows to another shard count (pure: shard states in, shard states out).

A restart with a different ``learn.shards`` restores the checkpoint's rows through ``reshard``: every
live row (both vectors, both Adagrad accumulators, count, versions, last-touched time) moves whole to
the shard ``shard_of`` sends its key to under the new count, so a pull returns exactly what it
returned before. Free rows are dropped (the new tables are compact, their free lists empty) and the
key -> row maps are rebuilt by ``ParameterShard.restore`` from the keys.

Versions: every new shard starts at the highest version of the old ones and rows keep the version
of their last change, so no row is newer than its shard and no version goes back. A delta across a
resharding would still be meaningless (a row's version counted on its old shard), and none is taken:
the snapshotter keeps the shard versions a delta diffs from in memory only, never in a checkpoint, so
the restored process's first snapshot is a full export (``Snapshotter.since()`` is all None until a
snapshot is published). The event clock is the newest of the old shards' (every push carries the
batch's time to every shard, so they agree); push and expiry totals, which no key owns, keep their sums.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from recsim_stream.shard import _ROW_FIELDS, State
from recsim_stream.sharding import shard_of

log = logging.getLogger(__name__)

ROW_ARRAYS = (*_ROW_FIELDS, "input", "output")  # one entry per row, moved with its key
REMOVED = ("removed_keys", "removed_versions")  # expirations a delta reports, moved with their key
TOTALS = ("pushes", "expired_total")  # per-shard totals that no key owns: only their sums are kept
SCALARS = ("dim", "version", "clock", "free", *TOTALS)
KNOWN_FIELDS = frozenset((*ROW_ARRAYS, *REMOVED, *SCALARS))


def reshard(states: Sequence[State], shards: int) -> list[State]:
    """``shards`` shard states holding the live rows of ``states`` (``ParameterShard.state()`` of
    every old shard, in shard order), each row in the shard its key is routed to."""
    if shards < 1:
        raise ValueError(f"reshard: expected a shard count >= 1, got {shards}")
    if not states:
        raise ValueError("reshard: expected the states of at least one shard, got none")
    for i, state in enumerate(states):
        unknown = sorted(set(state) - KNOWN_FIELDS)
        missing = sorted(KNOWN_FIELDS - set(state))
        if unknown or missing:
            raise ValueError(
                f"reshard: shard state {i} has fields {unknown} this module cannot re-route "
                f"and lacks {missing}"
            )
    dims = sorted({int(s["dim"]) for s in states})
    if len(dims) != 1:
        raise ValueError(f"reshard: expected shard states of one dim, got dims {dims}")

    live = [np.asarray(s["live"], dtype=bool) for s in states]
    rows = {
        name: np.concatenate([np.asarray(s[name])[m] for s, m in zip(states, live, strict=True)])
        for name in ROW_ARRAYS
    }
    removed = {
        name: np.concatenate([np.asarray(s[name], dtype=np.int64) for s in states]) for name in REMOVED
    }
    owner = shard_of(rows["keys"], shards)
    removed_owner = shard_of(removed["removed_keys"], shards)
    version = max(int(s["version"]) for s in states)
    clock = max(float(s["clock"]) for s in states)
    totals = {name: _spread(sum(int(s[name]) for s in states), shards) for name in TOTALS}

    out: list[State] = []
    for shard in range(shards):
        mine, gone = owner == shard, removed_owner == shard
        state: State = {name: rows[name][mine] for name in ROW_ARRAYS}
        state.update({name: removed[name][gone] for name in REMOVED})
        state.update({name: totals[name][shard] for name in TOTALS})
        state.update(free=np.zeros(0, dtype=np.int64), dim=dims[0], version=version, clock=clock)
        out.append(state)
    return out


def fit_shard_count(states: Sequence[State], shards: int) -> list[State]:
    """``states`` unchanged when they are ``shards`` of them, else re-routed to ``shards`` (logged)."""
    if len(states) == shards:
        return list(states)
    resharded = reshard(states, shards)
    log.info(
        "re-routed %d rows from %d shards to %d (learn.shards changed since the checkpoint)",
        sum(len(s["keys"]) for s in resharded),
        len(states),
        shards,
    )
    return resharded


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal integers that add up to it."""
    return [total // parts + (i < total % parts) for i in range(parts)]
