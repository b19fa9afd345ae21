"""The streaming SGNS learner as a ``StreamModel`` for prequential evaluation.

It feeds the same ``Learner`` the updater runs, with in-process shards, and answers from the
embeddings it last published, as the query API answers from its last snapshot.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from recsim_stream.cold_start import ColdStart
from recsim_stream.config import Config, SessionConfig
from recsim_stream.evaluate import Step
from recsim_stream.events import BadEvent, ItemMeta
from recsim_stream.learner import Learner
from recsim_stream.scoring import Embeddings
from recsim_stream.shard import ParameterShard, ShardExport
from recsim_stream.trainer import local_shard_calls

PENDING_STEPS = 4096  # steps ``learn`` keeps at most before taking them in without a publish


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
    def __init__(self, config: Config) -> None:
        self.name = "RECSIM-SGNS" if config.content.enabled else "RECSIM-SGNS-NO-CONTENT"
        config = dataclasses.replace(config, sessions=_eval_sessions(config))
        self.config = config
        self.shards = [ParameterShard(config.learn, i) for i in range(config.learn.shards)]
        pull, push = local_shard_calls(self.shards)
        self.learner = Learner(config, pull, push)
        self.served = Embeddings.empty(config.learn.dim)
        self.cold_start = (
            # process_time: eval's learn CPU counts every thread (evaluate._learning), so the tower's
            # share must too, torch's intra-op threads included
            ColdStart(config.content, config.learn.dim, config.learn.torch_threads, time.process_time)
            if config.content.enabled
            else None
        )
        self._events_at_publish = 0
        self.rows_expired = 0  # rows dropped by learn.expire_after_s
        self.shard_rows: list[tuple[int, int]] = []  # (events learned, live shard rows) at each publish
        self._pending: list[Step] = []  # learned steps not yet taken in (see ``learn``)
        # Per shard, the keys of its rows at the last publish and their item ids (``_names``).
        self._shard_names: list[tuple[np.ndarray, list[str]]] = [
            (np.zeros(0, np.int64), []) for _ in self.shards
        ]

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        if self.cold_start is not None:
            self.cold_start.observe_items(items)

    def learn(self, step: Step) -> None:
        """Keep the step; ``publish`` (or a full buffer) learns the kept steps in one loop, in order.

        What the learner computes is the same, since nothing served reads unpublished state. What
        changes is that the loop runs warm, as the updater's loop over a poll of records does: called
        between the driver's queries, which evict the learner's data and code from the caches, the
        same per-event work took 6.3 instead of 3.0 us an event on MovieLens
        (``scripts/learn_loop_cost.py``, BENCHMARKS.md)."""
        self._pending.append(step)
        if len(self._pending) >= PENDING_STEPS:
            self._learn_pending()

    def _learn_pending(self) -> None:
        learner, cold_start = self.learner, self.cold_start
        known, add, ready = learner.items.known, learner.add, learner.ready
        for step in self._pending:
            if cold_start is not None and not step.repeat and not known(step.item_id):
                cold_start.record_new_item(step.prefix, step.item_id)
            arrival = add(step)  # a step has an event's fields, its session key as session id
            if isinstance(arrival, BadEvent):  # cannot happen on a sorted stream with infinite lateness
                raise RuntimeError(f"eval stream refused an event: {arrival.detail}")
            if ready():
                self._train()
        self._pending.clear()

    def _train(self) -> None:
        """Train the pending pairs; the cold start keeps a sample of them to train the tower on."""
        self.learner.train()
        if self.cold_start is not None and self.cold_start.metadata:
            for batch in self.learner.last_batches:
                self.cold_start.remember_pairs(batch.centers, batch.contexts, self.learner.items.names)

    def publish(self) -> None:
        self._learn_pending()
        self._train()
        self._expire()
        exports = [shard.export() for shard in self.shards]
        ids = self._names(exports)
        inputs = np.concatenate([e.input for e in exports])
        outputs = np.concatenate([e.output for e in exports])
        counts = np.concatenate([e.counts for e in exports])
        cold = content = None
        cold_temperature = self.config.content.temperature
        if self.cold_start is not None and self.cold_start.metadata:
            self.cold_start.calibrate(self.served)
            events = self.learner.events_added - self._events_at_publish
            self._events_at_publish = self.learner.events_added
            if self.cold_start.reservoir.left:
                # As the updater does: the rows of the pairs a due step draws, pulled only then.
                self.cold_start.train_pulling(events, self.learner.learned_rows)
            rows = self.cold_start.complete(ids, inputs, outputs, counts)
            ids, inputs, outputs, counts = rows.ids, rows.inputs, rows.outputs, rows.counts
            cold, content = rows.cold, rows.content
            cold_temperature = self.cold_start.temperature.value
        self.served = Embeddings(
            ids,
            inputs,
            outputs,
            counts,
            popularity_power=self.config.learn.sampler_power,
            revisit_share=self.learner.revisits.value,
            cold=cold,
            new_item_share=self.learner.new_items.value,
            content=content,
            cold_temperature=cold_temperature,
            new_item_share_after_cold=self.learner.new_items_after_cold.value,
        )
        self.learner.mark_published()

    def _expire(self) -> None:
        """``learn.expire_after_s`` as the updater applies it at a snapshot (``Updater.expire``): rows
        no positive pair touched for that long in event time leave the shards and the sampler, their
        items the tower's reservoir, and a listed one is served by its content again (the full
        completion gives it a content-only row). Records the live rows after each publish."""
        newest = self.learner.newest_ts
        if self.config.learn.expire_after_s > 0 and np.isfinite(newest):
            keys = np.concatenate([shard.expire(newest) for shard in self.shards])
            for shard in self.shards:
                shard.forget_removed(shard.version)  # nothing reads deltas here
            expired = self.learner.expired(keys)
            if self.cold_start is not None:
                self.cold_start.unlearn(expired)
            self.rows_expired += len(keys)
        self.shard_rows.append((self.learner.events_added, sum(s.stats()["rows"] for s in self.shards)))

    def _names(self, exports: list[ShardExport]) -> list[str]:
        """The item ids of the exported rows. A shard's live rows only grow at their end here unless
        rows expired (``learn.expire_after_s``), so each shard's names from the last publish are kept
        and only its new rows are named; naming every row took 0.5 ms a publish on REES46."""
        names: list[str] = []
        for shard, export in enumerate(exports):
            keys, named = self._shard_names[shard]
            if len(export.keys) >= len(keys) and np.array_equal(export.keys[: len(keys)], keys):
                named.extend(self.learner.items.name_array(export.keys[len(keys) :]))
            else:
                named = self.learner.items.name_array(export.keys)
            self._shard_names[shard] = (export.keys, named)
            names += named
        return names

    @property
    def content_training_cpu_s(self) -> float:
        """CPU seconds spent training the content tower (0 without it)."""
        return 0.0 if self.cold_start is None else self.cold_start.training_cpu_s

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        return self.served.recommend(prefix, k)

    def serves(self, item_id: str) -> bool:
        return item_id in self.served.position


def make_model(config: Config, _events: int) -> SgnsStreamModel:
    return SgnsStreamModel(config)
