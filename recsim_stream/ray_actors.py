"""Ray wiring of the parameter-server shards: no maths here, only placement and batched calls.

``ParameterShard`` becomes an actor as it is (``ray.remote(ParameterShard)``), so the tested pure
class is exactly what runs remotely. A call costs about a millisecond, so the trainer sends one pull
and one push per shard per batch of thousands of pairs, issued to all shards before waiting for any.
Ray runs one caller's calls to an actor in submission order, which makes an export issued right after
a push see that push: the snapshot barrier costs no stall. The same order lets a push go without
waiting, and a pull returns at once with rows fetched at first use (``PulledRows``): with
``learn.stale_pulls`` the trainer requests the next batch's rows before it computes this one's, so
the shards serve that pull while it computes (see trainer.py). ``barrier()`` waits for every push
in flight (and raises if a shard failed); the updater calls it before committing offsets, so a
commit still means "applied to the shards".

Several updaters joining one running cluster (``ray.address``) share named, detached shard actors
per consumer group, and one ``SharedNames`` actor through which the publisher learns the item ids
the others saw (item_names.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import ray

from recsim_stream.config import LearnConfig, RayConfig
from recsim_stream.item_names import NameLog
from recsim_stream.shard import ParameterShard, ShardExport
from recsim_stream.trainer import RowUpdate

NAMESPACE = "recsim"
log = logging.getLogger(__name__)
ShardActor = ray.remote(ParameterShard)
NameLogActor = ray.remote(NameLog)


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


class PulledRows(Sequence[tuple[np.ndarray, np.ndarray]]):
    """(input rows, output rows) per shard, fetched from the object store on first access."""

    def __init__(self, refs: list[ray.ObjectRef]) -> None:
        self._refs = refs
        self._rows: list[tuple[np.ndarray, np.ndarray]] | None = None

    def _get(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._rows is None:
            self._rows = ray.get(self._refs)
        return self._rows

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._get()[i]


class RayShards:
    """The shard actors of one learner, spread over the cluster's nodes.

    With ``shared_by`` (a consumer group id; used when several updaters join one running cluster)
    the actors are named and detached: the first updater creates them, the others find them, and
    they outlive any one updater. ``fresh`` says whether this process created every one of them
    (empty tables): only then may it restore them from a checkpoint. Without it, the actors are
    this process's own and die with it.
    """

    def __init__(self, config: LearnConfig, shared_by: str | None = None) -> None:
        # num_cpus=0: shards are memory-bound servers; they must not starve the scheduler on a
        # 2-core node. SPREAD places them on different nodes when the cluster has several.
        options = {"num_cpus": 0, "scheduling_strategy": "SPREAD", "max_concurrency": 1}
        if shared_by is None:
            self.actors = [ShardActor.options(**options).remote(config, i) for i in range(config.shards)]
            self.fresh = True
        else:
            found = [self._shared(config, i, shared_by, options) for i in range(config.shards)]
            self.actors = [actor for actor, _created in found]
            created = sum(created for _actor, created in found)
            self.fresh = created == config.shards
            if 0 < created < config.shards:
                log.warning(
                    "shared shards of group %r: %d of %d were missing and are created empty; the others "
                    "keep their rows, so no checkpoint is restored into them",
                    shared_by,
                    created,
                    config.shards,
                )
        self._pending: list[ray.ObjectRef] = []  # pushes not yet acknowledged

    @staticmethod
    def _shared(
        config: LearnConfig, shard: int, group_id: str, options: dict
    ) -> tuple[ray.actor.ActorHandle, bool]:
        """The named shard actor, created here (True) or found running (False)."""
        name = shard_name(group_id, shard, config.shards)
        try:
            actor = ShardActor.options(**options, name=name, namespace=NAMESPACE, lifetime="detached").remote(
                config, shard
            )
        except ValueError:  # the name is taken: another updater created it first
            return ray.get_actor(name, namespace=NAMESPACE), False
        return actor, True

    def pull(self, parts: list[np.ndarray]) -> PulledRows:
        """Issue one pull per shard now; the rows are waited for at the first access, so the
        trainer can compute on one batch while the shards serve the next one's pull."""
        return PulledRows([actor.pull.remote(keys) for actor, keys in zip(self.actors, parts, strict=True)])

    def push(self, updates: list[RowUpdate]) -> None:
        self._pending.extend(actor.push.remote(*u) for actor, u in zip(self.actors, updates, strict=True))

    def barrier(self) -> list[int]:
        """Wait until every push in flight is applied; returns the shard versions it reached."""
        pending, self._pending = self._pending, []
        return ray.get(pending)

    def export(self, since: Sequence[int | None]) -> list[ShardExport]:
        return ray.get([a.export.remote(s) for a, s in zip(self.actors, since, strict=True)])

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

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


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
