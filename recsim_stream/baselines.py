"""Baselines for the prequential evaluation: POP, RECENT, ITEMKNN, RECENT-KNN, GENSIM-RETRAIN.

They exist to say whether the streaming learner is worth its machinery, so each is the strong,
simple version of its idea, and each obeys the serving rule of ``evaluate.StreamModel``: what it
learns goes into a pending buffer that only ``publish()`` applies, so an answer never uses an event
the served state could not have had yet.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsim_stream.evaluate import Step
from recsim_stream.events import ItemMeta


def recent_items(prefix: Sequence[str], k: int) -> list[str]:
    """The session's earlier items, most recent first, without the last one (it is never the target)."""
    out: list[str] = []
    seen = {prefix[-1]} if prefix else set()
    for item in reversed(prefix[:-1]):
        if item not in seen:
            seen.add(item)
            out.append(item)
            if len(out) == k:
                break
    return out


class _Buffered:
    """Learned steps wait in ``_pending`` until ``publish()`` applies them to the served state."""

    name = ""

    def __init__(self) -> None:
        self._pending: list[Step] = []

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        """Behavioural baselines ignore metadata."""

    def learn(self, step: Step) -> None:
        if not step.repeat:
            self._pending.append(step)

    def publish(self) -> None:
        pending, self._pending = self._pending, []
        for step in pending:
            self._apply(step)
        self._published()

    def _apply(self, step: Step) -> None:
        raise NotImplementedError

    def _published(self) -> None:
        """Hook after a publish, e.g. to rebuild caches of the served state."""


class Pop(_Buffered):
    """The k most frequent items of the stream so far (non-repeat events), whatever the session."""

    name = "POP"

    def __init__(self) -> None:
        super().__init__()
        self._counts: Counter[str] = Counter()
        self._top: list[str] = []

    def _apply(self, step: Step) -> None:
        self._counts[step.item_id] += 1

    def _published(self) -> None:
        # Ties keep first-seen order (Counter preserves insertion order; nlargest is stable).
        self._top = [item for item, _ in heapq.nlargest(64, self._counts.items(), key=lambda kv: kv[1])]

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        if k <= len(self._top):
            return self._top[:k]
        return [item for item, _ in self._counts.most_common(k)]

    def serves(self, item_id: str) -> bool:
        return item_id in self._counts


class Recent:
    """The session's own earlier items, most recent first; learns nothing."""

    name = "RECENT"

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        """No state."""

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        return recent_items(prefix, k)

    def learn(self, step: Step) -> None:
        """No state."""

    def publish(self) -> None:
        """No state."""

    def serves(self, item_id: str) -> bool:
        return False


@dataclass(frozen=True)
class ItemKnnConfig:
    window: int = 5  # an event co-occurs with this many preceding items of its session

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"ItemKnnConfig.window must be >= 1, got {self.window}")


class ItemKnn(_Buffered):
    """Neighbours of the session's last item by windowed co-occurrence, cosine-normalised.

    score(a, b) = co(a, b) / sqrt(n(a) * n(b)), where co counts the times a and b fell within
    ``window`` positions of each other in a session and n counts an item's (non-repeat) events.
    A query costs O(neighbours of the last item) once per publish, then O(k) from a cache.
    """

    name = "ITEMKNN"

    def __init__(self, config: ItemKnnConfig | None = None) -> None:
        super().__init__()
        self._window = (config or ItemKnnConfig()).window
        self._co: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._n: Counter[str] = Counter()
        self._cache: dict[str, list[str]] = {}
        self._cache_k = 0

    def _apply(self, step: Step) -> None:
        item = step.item_id
        self._n[item] += 1
        co = self._co
        for other in step.prefix[-self._window :]:
            if other != item:
                co[item][other] += 1
                co[other][item] += 1

    def _published(self) -> None:
        self._cache.clear()

    def neighbours(self, item: str, k: int) -> list[str]:
        if k != self._cache_k:
            self._cache.clear()
            self._cache_k = k
        cached = self._cache.get(item)
        if cached is None:
            cached = self._cache[item] = self._rank(item, k)
        return cached

    def _rank(self, item: str, k: int) -> list[str]:
        row = self._co.get(item)
        if not row:
            return []
        ids = list(row)
        co = np.fromiter(row.values(), dtype=np.float64, count=len(ids))
        n = self._n
        norms = np.fromiter((n[other] for other in ids), dtype=np.float64, count=len(ids))
        scores = co / np.sqrt(norms * n[item])
        if len(ids) > k:
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(len(ids))
        # Highest score first; ties by first co-occurrence (stable sort on positions).
        order = top[np.lexsort((top, -scores[top]))]
        return [ids[i] for i in order]

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        return self.neighbours(prefix[-1], k) if prefix else []

    def serves(self, item_id: str) -> bool:
        return item_id in self._n


class RecentKnn:
    """RECENT's list first, then ITEMKNN neighbours of the last item to fill the rest."""

    name = "RECENT-KNN"

    def __init__(self, config: ItemKnnConfig | None = None) -> None:
        self._knn = ItemKnn(config)

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        self._knn.observe_items(items)

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        out = recent_items(prefix, k)
        if len(out) < k and prefix:
            taken = set(out)
            taken.add(prefix[-1])
            for item in self._knn.neighbours(prefix[-1], k + len(taken)):
                if item not in taken:
                    out.append(item)
                    if len(out) == k:
                        break
        return out

    def learn(self, step: Step) -> None:
        self._knn.learn(step)

    def publish(self) -> None:
        self._knn.publish()

    def serves(self, item_id: str) -> bool:
        return self._knn.serves(item_id)


@dataclass(frozen=True)
class GensimRetrainConfig:
    retrain_every: int  # events between retrains; the eval CLI sets it to a tenth of the stream
    dim: int = 64
    window: int = 5
    negative: int = 5
    epochs: int = 5
    context_items: int = 3  # the query is the mean vector of this many last prefix items
    seed: int = 13
    workers: int = 1  # one worker: deterministic for a fixed PYTHONHASHSEED, and the machine has 2 cores

    def __post_init__(self) -> None:
        if self.retrain_every < 1:
            raise ValueError(f"GensimRetrainConfig.retrain_every must be >= 1, got {self.retrain_every}")
        if self.context_items < 1:
            raise ValueError(f"GensimRetrainConfig.context_items must be >= 1, got {self.context_items}")


class GensimRetrain:
    """gensim Word2Vec (skip-gram, negative sampling) retrained from scratch on every session so far.

    The batch-retraining strawman: it publishes only when it retrains, every ``retrain_every``
    events (its own schedule; the driver's ``publish()`` does nothing), so between retrains new
    items are unknown to it. gensim is imported lazily: it is a dev/bench dependency only.
    """

    name = "GENSIM-RETRAIN"

    def __init__(self, config: GensimRetrainConfig) -> None:
        self._config = config
        self._sessions: dict[str, list[str]] = {}
        self._events = 0
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._unit = np.zeros((0, config.dim), dtype=np.float32)

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        """Behavioural baseline: ignores metadata."""

    def learn(self, step: Step) -> None:
        if not step.repeat:
            self._sessions.setdefault(step.session, []).append(step.item_id)
        self._events += 1
        if self._events % self._config.retrain_every == 0:
            self._retrain()

    def publish(self) -> None:
        """Publishes on its own retrain schedule (see the class docstring)."""

    def _retrain(self) -> None:
        from gensim.models import Word2Vec  # noqa: PLC0415 - optional dependency

        c = self._config
        model = Word2Vec(
            sentences=list(self._sessions.values()),
            vector_size=c.dim,
            window=c.window,
            negative=c.negative,
            sg=1,
            epochs=c.epochs,
            min_count=1,
            workers=c.workers,
            seed=c.seed,
        )
        wv = model.wv
        self._ids = list(wv.index_to_key)
        self._row = {item: i for i, item in enumerate(self._ids)}
        vectors = wv.vectors.astype(np.float32)
        self._unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def recommend(self, prefix: Sequence[str], k: int) -> list[str]:
        rows = [self._row[i] for i in prefix[-self._config.context_items :] if i in self._row]
        if not rows:
            return []
        scores = self._unit @ self._unit[rows].mean(axis=0)
        last = self._row.get(prefix[-1])
        if last is not None:
            scores[last] = -np.inf  # the last item is never the target (it would be a repeat)
        n = min(k, len(self._ids))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [self._ids[i] for i in top if scores[i] > -np.inf]

    def serves(self, item_id: str) -> bool:
        return item_id in self._row


def make_baselines(total_events: int, knn: ItemKnnConfig | None = None) -> list:
    """The five baselines of the learner issue, GENSIM-RETRAIN retraining every 10% of the stream."""
    return [
        Pop(),
        Recent(),
        ItemKnn(knn),
        RecentKnn(knn),
        GensimRetrain(GensimRetrainConfig(retrain_every=max(1, math.ceil(total_events / 10)))),
    ]
