"""Ray wiring of the parameter-server shards: no maths here, only placement and batched calls.

``ParameterShard`` becomes an actor as it is (``ray.remote(ParameterShard)``), so the tested pure
class is exactly what runs remotely. A call costs about a millisecond, so the trainer sends one pull
and one push per shard per batch of thousands of pairs, issued to all shards before waiting for any.
Ray runs one caller's calls to an actor in submission order, which makes an export issued right after
a push see that push: the snapshot barrier costs no stall. The same order lets a push go without
waiting: the next batch's pull queues behind it on each shard, so a batch costs one round trip, not
two. ``barrier()`` waits for every push in flight (and raises if a shard failed); the updater calls it
before committing offsets, so a commit still means "applied to the shards".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import ray

from recsim_stream.config import LearnConfig, RayConfig
from recsim_stream.shard import ParameterShard, ShardExport
from recsim_stream.trainer import RowUpdate

NAMESPACE = "recsim"
ShardActor = ray.remote(ParameterShard)


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


class RayShards:
    """The shard actors of one learner, spread over the cluster's nodes."""

    def __init__(self, config: LearnConfig) -> None:
        self.actors = [
            # num_cpus=0: shards are memory-bound servers; they must not starve the scheduler on
            # a 2-core node. SPREAD places them on different nodes when the cluster has several.
            ShardActor.options(num_cpus=0, scheduling_strategy="SPREAD", max_concurrency=1).remote(config, i)
            for i in range(config.shards)
        ]
        self._pending: list[ray.ObjectRef] = []  # pushes not yet acknowledged

    def pull(self, parts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return ray.get([actor.pull.remote(keys) for actor, keys in zip(self.actors, parts, strict=True)])

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
