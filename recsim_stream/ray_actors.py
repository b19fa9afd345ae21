"""Ray wiring of the parameter-server shards: no maths here, only placement and batched calls.

The actor is the tested pure ``ParameterShard`` with methods that only reshape its arguments and
results for transport (``ParameterShardActor``). A call costs about a millisecond of CPU across the
processes and every object over 100 KB one object-store put (~0.5 ms), whatever their size, so the
trainer makes one call per shard per batch of thousands of pairs, issued to all shards before
waiting for any: an exchange (this batch's push, then the rows of the batch after next) whose rows
travel in chunks (``CHUNK_BYTES``); a push is one object for all shards. Ray runs one caller's calls
to an actor in submission order, which makes an export issued right after a push see that push: the
snapshot barrier costs no stall. The same order lets a push go without waiting (the shard applies it
while this process computes or windows the next events), and pulled rows are fetched at first use
(``LazyPulls``), so the shards serve a pull while the trainer computes (exactly: see trainer.py).
``barrier()`` waits for every push in flight (and raises if a shard failed); the updater calls it
before committing offsets, so a commit still means "applied to the shards".

Several updaters joining one running cluster (``ray.address``) share named, detached shard actors
per consumer group, and one ``SharedNames`` actor through which the publisher learns the item ids
the others saw (item_names.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import ray

from recsim_stream.config import LearnConfig, RayConfig
from recsim_stream.item_names import NameLog
from recsim_stream.shard import ParameterShard, RowUpdate, ShardExport
from recsim_stream.trainer import PulledRows, PullParts

NAMESPACE = "recsim"
log = logging.getLogger(__name__)
NameLogActor = ray.remote(NameLog)

# Ray 2.60 copies an out-of-band buffer of 1 MiB or more into the object store with six threads it
# starts for that one copy (a compile-time constant of its serializer): on two cores a 1.6 MB put cost
# 0.96 ms of CPU against 0.49 ms for the same bytes in pieces under 1 MiB (scripts/ray_put_chunks.py).
# Row tables therefore travel as lists of row slices (views, no copy) below this size.
CHUNK_BYTES = 1 << 19


def chunked(table: np.ndarray) -> list[np.ndarray]:
    """``table`` as row slices of at most ``CHUNK_BYTES`` each (views; one empty slice if empty)."""
    step = max(1, CHUNK_BYTES // max(1, table.strides[0]))
    return [table[i : i + step] for i in range(0, len(table), step)] or [table]


def joined(chunks: Sequence[np.ndarray]) -> np.ndarray:
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def to_wire(update: RowUpdate) -> RowUpdate:
    """The update with its gradients in chunks (``joined`` on arrival)."""
    return update._replace(grad_in=chunked(update.grad_in), grad_out=chunked(update.grad_out))


def _put_updates(updates: list[list[RowUpdate]]) -> ray.ObjectRef:
    """Every shard's updates of every batch as one object-store put (a put costs ~0.5 ms whatever its
    size); each shard reads its own (``ParameterShardActor.apply_wire``)."""
    return ray.put([[to_wire(u) for u in batch] for batch in updates])


class ParameterShardActor(ParameterShard):
    """The pure shard plus the transport shapes above; no other behaviour."""

    def apply_wire(self, batches: list[list[RowUpdate]], shard: int) -> int:
        """Apply this shard's update of each batch, in order (every shard gets the one object
        holding all of them); returns the version after the last."""
        version = self.version
        for updates in batches:
            update = updates[shard]
            version = self.apply(
                update._replace(grad_in=joined(update.grad_in), grad_out=joined(update.grad_out))
            )
        return version

    def exchange_wire(
        self, updates: list[list[RowUpdate]], shard: int, pieces: list[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[int, PulledRows]:
        """``apply_wire`` then ``pull_chunks``: one call instead of two (two returns: the version is
        acknowledged at the barrier, the rows are fetched when the trainer reaches them)."""
        return self.apply_wire(updates, shard), self.pull_chunks(pieces)

    def pull_chunks(self, pieces: list[tuple[np.ndarray, np.ndarray]]) -> PulledRows:
        inputs, outputs, *rest = self.pull_for_update(pieces)
        return PulledRows(chunked(inputs), chunked(outputs), *rest)


ShardActor = ray.remote(ParameterShardActor)


def init_ray(config: RayConfig) -> None:
    """Join the cluster at ``config.address``, or start a small local one in this process."""
    if ray.is_initialized():
        return
    if config.address:
        ray.init(address=config.address, namespace=NAMESPACE, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=config.num_cpus,
            object_store_memory=config.object_store_mb * 1024 * 1024,
            include_dashboard=False,
            namespace=NAMESPACE,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )


def shard_name(group_id: str, shard: int, shards: int) -> str:
    """The Ray name of a shared shard actor: one set per consumer group and shard count."""
    return f"{group_id}-shard-{shard}-of-{shards}"


class LazyPulls(Sequence[PulledRows]):
    """(input row chunks, output row chunks, accumulators...) per shard, fetched from the object store
    on first access (zero-copy: the trainer concatenates the chunks of all shards once)."""

    def __init__(self, refs: list[ray.ObjectRef]) -> None:
        self._refs = refs
        self._rows: list[PulledRows] | None = None

    def _get(self) -> list[PulledRows]:
        if self._rows is None:
            self._rows = ray.get(self._refs)
        return self._rows

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, i: int) -> PulledRows:
        return self._get()[i]


SHARED_SET_WAIT_S = 300.0  # how long a non-publishing updater waits for the publisher's shard set
_NAME_RELEASE_S = 30.0  # a killed actor's name is freed asynchronously


@ray.remote(num_cpus=0)
class _OpenMarker:
    """Exists while a shared set is restored and open for training (its name is the flag)."""


def _marker_name(group_id: str, shards: int) -> str:
    return f"{group_id}-shards-open-of-{shards}"


def _marker(config: LearnConfig, group_id: str) -> ray.actor.ActorHandle | None:
    try:
        return ray.get_actor(_marker_name(group_id, config.shards), namespace=NAMESPACE)
    except ValueError:
        return None


def _running_shards(config: LearnConfig, group_id: str) -> list[ray.actor.ActorHandle | None]:
    """The named shards of the group that are alive now (None where a shard is missing)."""
    found: list[ray.actor.ActorHandle | None] = []
    for i in range(config.shards):
        try:
            found.append(ray.get_actor(shard_name(group_id, i, config.shards), namespace=NAMESPACE))
        except ValueError:
            found.append(None)
    return found


def _publisher_set(
    config: LearnConfig, group_id: str, options: dict
) -> tuple[list[ray.actor.ActorHandle], bool]:
    """The whole open set (not fresh), or a new one (fresh), never a mix of the two. A whole set
    that was never opened (its publisher died before restoring it) is remade too."""
    running = _running_shards(config, group_id)
    marker = _marker(config, group_id)
    if marker is not None and all(actor is not None for actor in running):
        return running, False  # type: ignore[return-value]
    if marker is not None:
        ray.kill(marker)  # closed first, so no other updater joins what is about to be killed
    survivors = [actor for actor in running if actor is not None]
    if survivors:
        log.warning(
            "shared shards of group %r: %d of %d running; killing them to remake the whole set from the "
            "checkpoint (the survivors are ahead of it)",
            group_id,
            len(survivors),
            config.shards,
        )
        for actor in survivors:
            ray.kill(actor)
    actors = []
    for i in range(config.shards):
        name = shard_name(group_id, i, config.shards)
        deadline = time.monotonic() + _NAME_RELEASE_S
        while True:
            try:
                actors.append(
                    ShardActor.options(**options, name=name, namespace=NAMESPACE, lifetime="detached").remote(
                        config, i
                    )
                )
                break
            except ValueError:  # the name of a killed survivor is not free yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return actors, True


def _wait_for_set(config: LearnConfig, group_id: str, wait_s: float) -> list[ray.actor.ActorHandle]:
    """The publisher's whole set, once it is open (restored): a non-publisher never makes shards."""
    deadline = time.monotonic() + wait_s
    next_log = time.monotonic()
    while True:
        running = _running_shards(config, group_id)
        if _marker(config, group_id) is not None and all(actor is not None for actor in running):
            return running  # type: ignore[return-value]
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(
                f"shared shards of group {group_id!r}: expected {config.shards} running, found "
                f"{sum(a is not None for a in running)} (open: {_marker(config, group_id) is not None}) after "
                f"{wait_s:.0f} s; is the publishing updater "
                "(snapshot.enabled) running?"
            )
        if now >= next_log:
            log.info("waiting for the publishing updater's %d shards of group %r", config.shards, group_id)
            next_log = now + 10.0
        time.sleep(0.5)


class RayShards:
    """The shard actors of one learner, spread over the cluster's nodes.

    With ``shared_by`` (a consumer group id; used when several updaters join one running cluster)
    the actors are named and detached, so they outlive any one updater. Only the publishing updater
    (``create``) makes them; the others wait until the whole set is running. A set is only ever
    whole or remade: when the publisher finds part of it (a shard died), it kills the survivors and
    creates every shard afresh, because survivors that are ahead of the checkpoint cannot be mixed
    with a shard restored from it. ``fresh`` says whether this process created the set (empty
    tables): only then may it restore them from a checkpoint. Without ``shared_by``, the actors are
    this process's own and die with it.
    """

    def __init__(
        self,
        config: LearnConfig,
        shared_by: str | None = None,
        create: bool = True,
        wait_s: float = SHARED_SET_WAIT_S,
    ) -> None:
        # num_cpus=0: shards are memory-bound servers; they must not starve the scheduler on a
        # 2-core node. SPREAD places them on different nodes when the cluster has several.
        options = {"num_cpus": 0, "scheduling_strategy": "SPREAD", "max_concurrency": 1}
        self.fresh = True
        self._config, self._shared_by = config, shared_by
        if shared_by is None:
            self.actors = [ShardActor.options(**options).remote(config, i) for i in range(config.shards)]
        elif create:
            self.actors, self.fresh = _publisher_set(config, shared_by, options)
        else:
            self.actors, self.fresh = _wait_for_set(config, shared_by, wait_s), False
        self._pending: list[ray.ObjectRef] = []  # pushes not yet acknowledged

    def pull(self, parts: PullParts) -> LazyPulls:
        """Issue one pull per shard now; the rows are waited for at the first access, so the
        trainer can compute on one batch while the shards serve the next one's pull."""
        return LazyPulls(
            [actor.pull_chunks.remote(pieces) for actor, pieces in zip(self.actors, parts, strict=True)]
        )

    def push(self, updates: list[list[RowUpdate]]) -> None:
        """Send the updates without waiting (acknowledged at ``barrier``): one object-store put for
        all shards (each put costs ~0.5 ms whatever its size), each shard reads its own."""
        shared = _put_updates(updates)
        self._pending.extend(actor.apply_wire.remote(shared, s) for s, actor in enumerate(self.actors))

    def exchange(self, updates: list[list[RowUpdate]], parts: PullParts) -> tuple[None, LazyPulls]:
        """``push`` then ``pull`` in one call per shard (a call costs ~1 ms of CPU across the
        processes, whatever it carries)."""
        shared = _put_updates(updates)
        rows = []
        for s, (actor, pieces) in enumerate(zip(self.actors, parts, strict=True)):
            version, pulled = actor.exchange_wire.options(num_returns=2).remote(shared, s, pieces)
            self._pending.append(version)
            rows.append(pulled)
        return None, LazyPulls(rows)

    def barrier(self) -> list[int]:
        """Wait until every push in flight is applied; returns the shard versions it reached."""
        pending, self._pending = self._pending, []
        return ray.get(pending)

    def export(self, since: Sequence[int | None]) -> list[ShardExport]:
        return ray.get([a.export.remote(s) for a, s in zip(self.actors, since, strict=True)])

    def expire(self, now_ts: float) -> np.ndarray:
        """Expire the rows untouched since ``now_ts - learn.expire_after_s`` on every shard (after
        the pushes sent before: an actor runs one caller's calls in order); returns their keys."""
        expired = ray.get([a.expire.remote(now_ts) for a in self.actors])
        return np.concatenate(expired) if expired else np.zeros(0, np.int64)

    def removed_since(self, seen: Sequence[int | None] | None) -> tuple[np.ndarray, list[int]]:
        """The keys every shard expired after the versions ``seen`` (None: nothing, the versions
        only), and the versions to ask from next (ParameterShard.removed_since)."""
        versions = [None] * len(self.actors) if seen is None else list(seen)
        answers = ray.get([a.removed_since.remote(v) for a, v in zip(self.actors, versions, strict=True)])
        return np.concatenate([keys for keys, _ in answers]), [version for _, version in answers]

    def set_initial(self, parts: list[tuple[np.ndarray, np.ndarray]], ts: float | None) -> list[int]:
        return ray.get(
            [
                a.set_initial.remote(keys, vecs, None, ts)
                for a, (keys, vecs) in zip(self.actors, parts, strict=True)
            ]
        )

    def state(self) -> list[dict]:
        """Every shard's table (copies), for a checkpoint; call between batches."""
        self.barrier()
        return ray.get([actor.state.remote() for actor in self.actors])

    def restore(self, states: Sequence[dict]) -> None:
        if len(states) != len(self.actors):
            raise ValueError(f"shard states: {len(states)} saved, {len(self.actors)} shards configured")
        ray.get([actor.restore.remote(state) for actor, state in zip(self.actors, states, strict=True)])

    def stats(self) -> list[dict]:
        return ray.get([actor.stats.remote() for actor in self.actors])

    def open(self) -> None:
        """A shared set this process made is restored: let the other updaters join it (the
        publisher calls this after ``resume``). A set it joined is open already."""
        if self._shared_by is None or not self.fresh:
            return
        name = _marker_name(self._shared_by, self._config.shards)
        deadline = time.monotonic() + _NAME_RELEASE_S
        while True:
            try:
                _OpenMarker.options(name=name, namespace=NAMESPACE, lifetime="detached").remote()
                return
            except ValueError:  # the marker of the set this one replaced is not released yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        """Kill every shard; a shared set's names are free again when this returns."""
        if self._shared_by is not None and (marker := _marker(self._config, self._shared_by)) is not None:
            ray.kill(marker)
        for actor in self.actors:
            ray.kill(actor)
        if self._shared_by is not None:
            deadline = time.monotonic() + _NAME_RELEASE_S
            while any(a is not None for a in _running_shards(self._config, self._shared_by)):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"shared shards of group {self._shared_by!r} still named after being killed"
                    )
                time.sleep(0.2)


class SharedNames:
    """The group's ``NameLog`` actor (created by the first updater, found by the others, detached)."""

    def __init__(self, group_id: str) -> None:
        self.actor = NameLogActor.options(
            name=f"{group_id}-item-names",
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
        ).remote()
        self._position = 0

    def share(self, names: list[str]) -> None:
        """Append ``names`` without waiting for the actor."""
        self.actor.add.remote(names)

    def fetch(self) -> list[str]:
        """The ids others appended since this process's last fetch."""
        names, self._position = ray.get(self.actor.since.remote(self._position))
        return names
