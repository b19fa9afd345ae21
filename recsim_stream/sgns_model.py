"""The streaming SGNS learner as a ``StreamModel`` for prequential evaluation.

It feeds the same ``Learner`` the updater runs, with in-process shards, and answers from the
embeddings it last published, as the query API answers from its last snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from recsim_stream.config import Config, SessionConfig
from recsim_stream.evaluate import Step
from recsim_stream.events import BadEvent, Event, ItemMeta
from recsim_stream.learner import Learner
from recsim_stream.scoring import Embeddings
from recsim_stream.shard import ParameterShard
from recsim_stream.trainer import local_shard_calls


def _eval_sessions(config: Config) -> SessionConfig:
    """The protocol's sessions: no lateness (the stream is sorted), no cut by length or duration."""
    return dataclasses.replace(
        config.sessions,
        gap_s=config.eval.session_gap_s,
        allowed_lateness_s=float("inf"),
        max_events=1 << 30,
        max_duration_s=float("inf"),
    )


class SgnsStreamModel:
    name = "RECSIM-SGNS"

    def __init__(self, config: Config) -> None:
        config = dataclasses.replace(config, sessions=_eval_sessions(config))
        self.config = config
        self.shards = [ParameterShard(config.learn, i) for i in range(config.learn.shards)]
        pull, push = local_shard_calls(self.shards)
        self.learner = Learner(config, pull, push)
        self.served = Embeddings.empty(config.learn.dim)

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        """Metadata is used by the content tower (cold start); the SGNS core alone ignores it."""

    def learn(self, step: Step) -> None:
        # The protocol's session key is unique per session, so it stands in for the session id.
        event = Event(step.user_id, step.item_id, step.kind, step.ts, step.session)
        arrival = self.learner.add(event)
        if isinstance(arrival, BadEvent):  # cannot happen on a sorted stream with infinite lateness
            raise RuntimeError(f"eval stream refused an event: {arrival.detail}")
        if self.learner.ready():
            self.learner.train()

    def publish(self) -> None:
        self.learner.train()
        exports = [shard.export() for shard in self.shards]
        keys = np.concatenate([e.keys for e in exports])
        names = self.learner.items.name_array(keys)
        self.served = Embeddings(
            names,
            np.concatenate([e.input for e in exports]),
            np.concatenate([e.output for e in exports]),
            np.concatenate([e.counts for e in exports]),
            popularity_power=self.config.learn.sampler_power,
            revisit_share=self.learner.revisits.value,
        )

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        return self.served.recommend(prefix, k)

    def serves(self, item_id: str) -> bool:
        return item_id in self.served.position


def make_model(config: Config, _events: int) -> SgnsStreamModel:
    return SgnsStreamModel(config)
