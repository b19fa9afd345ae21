"""The streaming learning core: events -> session windows -> pairs -> SGNS batches on the shards.

The same object runs in the updater (shards are Ray actors) and in ``recsim-stream eval`` (shards in
process): only the pull/push callables differ, so what eval measures is what production trains.
Item ids become stable 64-bit keys here, once per event, and stay keys until a snapshot names them.
"""

from __future__ import annotations

import itertools
from array import array
from typing import NamedTuple

import numpy as np

from recsim_stream.config import Config
from recsim_stream.events import BadEvent, EventFields
from recsim_stream.pairs import PairBatch, PairBuffer
from recsim_stream.sampler import NegativeSampler
from recsim_stream.scoring import Share
from recsim_stream.sessions import Arrival, SessionWindows
from recsim_stream.sharding import item_key, split_by_shard
from recsim_stream.trainer import ExchangeFn, PullFn, PushFn, Segment, SgnsTrainer, StepResult, stack_rows


class ItemKeys:
    """item id <-> key, interned: one hash per distinct item, a dict lookup per event."""

    def __init__(self) -> None:
        self._keys: dict[str, int] = {}
        self.names: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, item_id: str) -> int:
        key = self._keys.get(item_id)
        if key is None:
            key = self._keys[item_id] = item_key(item_id)
            self.names[key] = item_id
        return key

    def known(self, item_id: str) -> bool:
        return item_id in self._keys

    def intern(self, item_id: str) -> tuple[int, bool]:
        """(key, whether the id was new): ``known`` then ``key`` in one lookup, for the per-event path."""
        key = self._keys.get(item_id)
        if key is not None:
            return key, False
        return self.key(item_id), True

    def name_array(self, keys: np.ndarray) -> list[str]:
        names = self.names
        return list(map(names.__getitem__, keys.tolist()))

    def state(self) -> dict:
        return {
            "keys": np.fromiter(self.names, dtype=np.int64, count=len(self.names)),
            "names": list(self.names.values()),
        }

    @classmethod
    def restore(cls, state: dict) -> ItemKeys:
        keys, names = state["keys"].tolist(), state["names"]
        if len(keys) != len(names):
            raise ValueError(f"item keys state: {len(keys)} keys but {len(names)} names")
        items = cls()
        items.names = dict(zip(keys, names, strict=True))
        items._keys = dict(zip(names, keys, strict=True))
        return items


class _Cut(NamedTuple):
    """The end of a batch among the pending pairs: pairs and tokens so far, newest event time."""

    pairs: int
    tokens: int
    ts: float


class Learner:
    """Accumulates pairs per event and trains them in batches of ``learn.batch_pairs``."""

    def __init__(
        self, config: Config, pull: PullFn, push: PushFn, exchange: ExchangeFn | None = None
    ) -> None:
        self.config = config
        self.windows: SessionWindows[int] = SessionWindows(config.sessions)
        self.items = ItemKeys()
        self.pairs = PairBuffer(config.pairs)
        self.sampler = NegativeSampler(config.learn)
        self.trainer = SgnsTrainer(config.learn, self.sampler, pull, push, exchange)
        self._pull = pull
        self._tokens = array("q")  # keys of the non-repeat events behind the pending pairs
        # Where a learner training every batch would have trained: train() trains each segment as
        # that call would have, so ``train_batches`` changes when training runs, not what it computes.
        self._cuts: list[_Cut] = []
        self.newest_ts = float("-inf")
        self.pairs_trained = 0
        self.events_added = 0
        self.revisits = Share()  # next item is an earlier item of its session
        # Next item not learned by the served state (never seen, or first seen since the last publish:
        # what the served mixture's new-item component ranks), split by whether the session's last
        # item was such an item itself: new items come in runs, a user working through the long tail
        # (MovieLens, late in the stream: 15% after a new item, 0.5% after another), so the served
        # mixture gives new items the share the session's own state shows.
        self.new_items = Share()  # after an item the served state had learned
        self.new_items_after_cold = Share()  # after an item it had not
        self._fresh: set[int] = set()  # keys first seen since ``mark_published``
        # What the content tower takes next: the batches of the last train() call, one per segment
        # (as many as separate calls would have trained, so its sample does not depend on batching)
        self.last_batches: list[PairBatch] = []

    def add(self, event: EventFields, partition: int = 0) -> Arrival[int] | BadEvent:
        """Window one event and make its pairs; a late event comes back as a BadEvent."""
        key, new = self.items.intern(event.item_id)
        arrival = self.windows.add(event, partition, key)
        if isinstance(arrival, BadEvent):
            return arrival
        fresh = self._fresh
        cold = new or key in fresh  # not learned by the served state
        if new:
            fresh.add(key)
        if not arrival.repeat:
            self._tokens.append(key)
            items = arrival.session.items
            length = len(items)
            if length >= 2:  # a prediction would have been asked for
                (self.new_items_after_cold if items[-2] in fresh else self.new_items).observe(cold)
            if length >= 3:  # an item other than the last one to return to
                self.revisits.observe(not arrival.first_seen)
        self.pairs.add(arrival)
        if event.ts > self.newest_ts:
            self.newest_ts = event.ts
        self.events_added += 1
        return arrival

    def state(self) -> dict:
        """Everything but the shards, between batches (no pairs pending), for a checkpoint."""
        if len(self.pairs):
            raise ValueError(f"Learner.state: {len(self.pairs)} pairs pending; train them first")
        return {
            "windows": self.windows.state(),
            "items": self.items.state(),
            "sampler": self.sampler.state(),
            "newest_ts": self.newest_ts,
            "pairs_trained": self.pairs_trained,
            "events_added": self.events_added,
            "revisits": [self.revisits.hits, self.revisits.chances],
            "new_items": [self.new_items.hits, self.new_items.chances],
            "new_items_after_cold": [self.new_items_after_cold.hits, self.new_items_after_cold.chances],
            "fresh": np.fromiter(self._fresh, dtype=np.int64, count=len(self._fresh)),
        }

    def restore(self, state: dict) -> None:
        """Continue from ``state()``: afterwards this learner behaves as the one that saved it."""
        self.windows = SessionWindows.restore(self.config.sessions, state["windows"])
        self.items = ItemKeys.restore(state["items"])
        self.sampler.restore(state["sampler"])
        self.newest_ts = float(state["newest_ts"])
        self.pairs_trained = int(state["pairs_trained"])
        self.events_added = int(state["events_added"])
        self.revisits = Share(*state["revisits"])
        self.new_items = Share(*state["new_items"])
        # Checkpoints from before the split have neither: the split starts from no evidence.
        self.new_items_after_cold = Share(*state.get("new_items_after_cold", (0, 0)))
        self._fresh = set(np.asarray(state.get("fresh", ()), dtype=np.int64).tolist())

    def learned_rows(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Learned (inputs, outputs) of ``ids`` from the shards, in their order: what the content tower
        trains on (``ColdStart.train_pulling``), pulled only for the pairs a due step draws."""
        keys = np.fromiter(map(self.items.key, ids), dtype=np.int64, count=len(ids))
        parts = split_by_shard(keys, self.config.learn.shards)
        pulled = self._pull([[(keys[p], keys[p])] for p in parts])
        back = np.argsort(np.concatenate(parts))
        return stack_rows([r.inputs for r in pulled])[back], stack_rows([r.outputs for r in pulled])[back]

    def expired(self, keys: np.ndarray) -> list[str]:
        """The shards dropped the rows of ``keys`` (``learn.expire_after_s``): the sampler stops
        drawing them as negatives, which would recreate their rows. Returns their item ids."""
        self.sampler.forget(keys)
        names = self.items.names
        return [names[k] for k in keys.tolist() if k in names]

    def mark_published(self) -> None:
        """The served state now holds every item seen so far: none is fresh any more. An updater
        that does not publish calls it every poll (its shares are never served)."""
        self._fresh.clear()

    def ready(self) -> bool:
        """Call where training may run: whether ``learn.train_batches`` batches are pending. A batch
        is cut here once ``learn.batch_pairs`` pairs have come since the last cut, where a learner
        with ``train_batches`` 1 would train; ``train`` then trains the batches overlapped, each as
        that learner would have (see SgnsTrainer), so ``train_batches`` only changes when training
        runs (and how much of it overlaps), not what it computes."""
        if len(self.pairs) - (self._cuts[-1].pairs if self._cuts else 0) >= self.config.learn.batch_pairs:
            self._cuts.append(_Cut(len(self.pairs), len(self._tokens), self.newest_ts))
        return len(self._cuts) >= self.config.learn.train_batches

    def train(self) -> StepResult:
        """Train everything pending: each cut batch, then the rest."""
        batch = self.pairs.take()
        tokens = np.frombuffer(self._tokens, dtype=np.int64)
        segments, pairs, used = [], 0, 0
        for cut in self._cuts:
            segments.append(Segment(cut.pairs, tokens[used : cut.tokens], cut.ts))
            pairs, used = cut.pairs, cut.tokens
        if len(batch) > pairs or len(tokens) > used or not segments:
            segments.append(
                Segment(len(batch), tokens[used:], self.newest_ts if len(batch) > pairs else None)
            )
        self._tokens, self._cuts = array("q"), []
        starts = [0, *(segment.end for segment in segments)]
        self.last_batches = [
            PairBatch(batch.centers[a:b], batch.contexts[a:b], batch.weights[a:b])
            for a, b in itertools.pairwise(starts)
            if b > a
        ]
        result = self.trainer.step(batch, segments=segments)
        self.pairs_trained += result.pairs
        return result
