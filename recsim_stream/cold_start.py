"""Cold start beside the learner: the content tower, trained on items that already have learned
vectors, gives every item with metadata a vector before its first click, and is blended out as the
item's own interactions accumulate.

The tower predicts an item's *pair* of learned vectors, input and output side by side (2 x dim),
because a next-item candidate is scored by its output vector and a query is built from input
vectors: a cold item must be able to play both parts.

Blend (``content_features.blend``): ``w = n / (n + half_life)`` on the learned vector, ``1 - w`` on
the content vector, with ``n`` the item's interaction count (positive pairs it took part in); an
item with no interaction is served from content alone and flagged cold.

Three things make the cold component hit rather than merely cover:
- the tower trains on a uniform reservoir of co-occurring pairs from the whole stream
  (``PairReservoir``), within a budget of pairs per learner event;
- cold items are ranked by the cosine of *content* vectors (``scoring.Embeddings.cold_scores``);
- that softmax's temperature is fitted by likelihood on the new items sessions actually went on to
  (``TemperatureFit``), scored against the table that served them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from recsim_stream.config import ContentConfig
from recsim_stream.content import ContentTower
from recsim_stream.content_features import learned_weight
from recsim_stream.events import ItemMeta
from recsim_stream.scoring import Embeddings

# Items whose learned weight is above this are served as learned (the content part is negligible).
_BLEND_UNTIL = 0.95
# Temperatures the cold softmax may take; cosines live in [-1, 1], so 0.01 is nearly an argmax and 1
# nearly uniform.
TEMPERATURE_GRID = np.geomspace(0.001, 1.0, 16)
_CALIBRATION_DECAY = 0.95  # per calibration: old evidence fades, so a drifting stream is followed


class PairReservoir:
    """A uniform sample of up to ``capacity`` co-occurring pairs over the whole stream (algorithm R).

    The tower then trains on many sessions' pairs rather than on the last batch only. Random draws
    come from (seed, pairs seen), so a run is reproducible and the state is just the pairs.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.left: list[str] = []
        self.right: list[str] = []
        self.seen = 0

    def __len__(self) -> int:
        return len(self.left)

    def add(self, left: Sequence[str], right: Sequence[str]) -> None:
        n = len(left)
        if len(right) != n:
            raise ValueError(
                f"reservoir.add needs as many right items as left items, got {n} and {len(right)}"
            )
        head = min(n, self.capacity - len(self.left))
        self.left.extend(left[:head])
        self.right.extend(right[:head])
        if head < n:
            rng = np.random.default_rng([self.seed, self.seen])
            index = self.seen + np.arange(head, n)  # position of each pair in the whole stream
            accepted = np.flatnonzero(rng.random(n - head) * (index + 1) < self.capacity)
            slots = rng.integers(0, self.capacity, len(accepted))
            for offset, slot in zip(accepted.tolist(), slots.tolist(), strict=True):
                self.left[slot] = left[head + offset]
                self.right[slot] = right[head + offset]
        self.seen += n

    def state(self) -> dict[str, object]:
        """Plain lists and ints (msgpack/JSON-able)."""
        return {"left": list(self.left), "right": list(self.right), "seen": self.seen}

    def restore(self, state: dict[str, object]) -> None:
        left, right, seen = state["left"], state["right"], state["seen"]
        assert isinstance(left, list) and isinstance(right, list) and isinstance(seen, int)
        if len(left) != len(right) or len(left) > self.capacity:
            raise ValueError(
                f"reservoir state: expected equal left/right lists of at most {self.capacity} pairs, "
                f"got {len(left)} and {len(right)}"
            )
        self.left, self.right, self.seen = list(left), list(right), seen


class TemperatureFit:
    """Maximum-likelihood temperature of the cold component's softmax, over ``TEMPERATURE_GRID``.

    The cold component is ``softmax(cosine / t)`` over the cold items; each observed new-item target
    adds its log-probability under every ``t`` of the grid (evidence decays per call), and ``value``
    is the best one so far, ``initial`` before any evidence.
    """

    def __init__(self, initial: float) -> None:
        self.initial = initial
        self.loglik = np.zeros(len(TEMPERATURE_GRID))
        self.evidence = 0.0

    def observe(self, target: np.ndarray, candidates: np.ndarray, log_scale: np.ndarray) -> None:
        """``target`` (m,): each event's cosine with the item it went on to; ``candidates`` (m, s):
        cosines with a sample of the other cold items (-inf where none); ``log_scale`` (m,): log of how
        many other cold items each sampled one stands for."""
        if not len(target):
            return
        tau = TEMPERATURE_GRID[:, None, None]
        t = target[None, :, None] / tau  # (G, m, 1)
        c = candidates[None, :, :] / tau + log_scale[None, :, None]  # (G, m, s)
        both = np.concatenate([t, c], axis=2)
        top = both.max(axis=2, keepdims=True)
        log_z = np.log(np.exp(both - top).sum(axis=2)) + top[:, :, 0]
        self.loglik = _CALIBRATION_DECAY * self.loglik + (t[:, :, 0] - log_z).sum(axis=1)
        self.evidence = _CALIBRATION_DECAY * self.evidence + len(target)

    @property
    def value(self) -> float:
        return self.initial if self.evidence == 0 else float(TEMPERATURE_GRID[int(np.argmax(self.loglik))])


@dataclass(frozen=True)
class ServedRows:
    """What ``ColdStart.complete`` hands to ``scoring.Embeddings``: every row, cold flags, content."""

    ids: list[str]
    inputs: np.ndarray
    outputs: np.ndarray
    counts: np.ndarray
    cold: np.ndarray  # bool: no interaction yet
    content: np.ndarray  # unit content vectors, a zero row where an item has no metadata


class ColdStart:
    def __init__(self, config: ContentConfig, dim: int, torch_threads: int = 1) -> None:
        self.config = config
        self.dim = dim
        self.tower = ContentTower(config, 2 * dim, torch_threads=torch_threads)
        self.metadata: dict[str, ItemMeta] = {}
        self.reservoir = PairReservoir(config.reservoir_pairs, config.seed)
        self.temperature = TemperatureFit(config.temperature)
        # Interaction count above which the blend leaves the learned vector as it is.
        self._blend_below = int(np.ceil(config.blend_half_life * _BLEND_UNTIL / (1 - _BLEND_UNTIL)))
        self._budget = 0.0  # tower pairs earned by learner events and not trained yet
        self._new_item_events: deque[tuple[tuple[str, ...], str]] = deque(maxlen=config.calibration_events)
        self._calibrations = 0
        # Unit content vectors, one row per item with metadata, recomputed once the tower has moved
        # reencode_every_steps steps: encoding the whole catalogue at every publish cost more than
        # the learner did on REES46.
        self._row: dict[str, int] = {}
        self._content = np.zeros((0, 2 * dim), dtype=np.float32)
        self._encoded_at = 0

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        for item in items:
            self.metadata[item.item_id] = item
            self._row.pop(item.item_id, None)  # (re-)encode with this metadata

    def forget(self, item_id: str) -> None:
        """The item was deleted from the catalogue (a tombstone on the items topic)."""
        self.metadata.pop(item_id, None)
        self._row.pop(item_id, None)

    def remember_pairs(self, left_ids: Sequence[str], right_ids: Sequence[str]) -> None:
        """Offer co-occurring pairs to the reservoir; pairs with an item without metadata are dropped."""
        meta = self.metadata
        kept = [(a, b) for a, b in zip(left_ids, right_ids, strict=True) if a in meta and b in meta]
        self.reservoir.add([a for a, _ in kept], [b for _, b in kept])

    def train(self, events: int, position: dict[str, int], inputs: np.ndarray, outputs: np.ndarray) -> int:
        """Tower steps earned by ``events`` learner events, on reservoir pairs whose items both have
        learned rows (at ``position`` in ``inputs``/``outputs``). Returns the steps taken."""
        self._budget += events * self.config.train_pairs_per_event
        taken = 0
        while self._budget >= self.config.train_batch:
            if not self._step(position, inputs, outputs):
                self._budget = 0.0  # nothing to train on yet: earn afresh rather than burst later
                break
            self._budget -= self.config.train_batch
            taken += 1
        return taken

    def train_pulling(self, events: int, rows: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]) -> int:
        """``train`` for a learner whose rows live elsewhere (the updater's shards): ``rows(ids)``
        returns the learned (inputs, outputs) of ``ids`` and is called only when a step is due, for
        the items of the pairs the due steps will draw, so a poll that earns no step costs nothing."""
        earned = self._budget + events * self.config.train_pairs_per_event
        steps = int(earned // self.config.train_batch)
        if not steps or not len(self.reservoir):
            if len(self.reservoir):
                self._budget = earned
                return 0
            return self.train(
                events, {}, np.zeros((0, self.dim), np.float32), np.zeros((0, self.dim), np.float32)
            )
        # Only the items of the pairs these steps will draw: a few thousand rows, not the reservoir's.
        reservoir, ids = self.reservoir, set()
        for step in range(self.tower.steps, self.tower.steps + steps):
            for i in self._draw(step).tolist():
                ids.update((reservoir.left[i], reservoir.right[i]))
        ids = sorted(ids)
        inputs, outputs = rows(ids)
        return self.train(events, {item: r for r, item in enumerate(ids)}, inputs, outputs)

    def _draw(self, step: int) -> np.ndarray:
        """Reservoir positions of the pairs tower step ``step`` trains on (ascending)."""
        size = len(self.reservoir)
        rng = np.random.default_rng([self.config.seed, step])
        chosen = rng.choice(size, min(size, self.config.train_batch), replace=False) if size else []
        return np.sort(np.asarray(chosen, dtype=np.int64))

    def _step(self, position: dict[str, int], inputs: np.ndarray, outputs: np.ndarray) -> bool:
        reservoir = self.reservoir
        pairs = [
            (reservoir.left[i], reservoir.right[i])
            for i in self._draw(self.tower.steps).tolist()
            if reservoir.left[i] in position and reservoir.right[i] in position
        ]
        if len(pairs) < 2:
            return False
        meta = self.metadata
        left = [position[a] for a, _ in pairs]
        right = [position[b] for _, b in pairs]
        self.tower.train_step(
            [meta[a] for a, _ in pairs],
            [meta[b] for _, b in pairs],
            np.hstack([inputs[left], outputs[left]]),
            np.hstack([inputs[right], outputs[right]]),
        )
        return True

    def complete(
        self,
        ids: list[str],
        inputs: np.ndarray,
        outputs: np.ndarray,
        counts: np.ndarray,
        learned_elsewhere: Collection[str] = (),
    ) -> ServedRows:
        """The served table: learned rows blended with content for items with few interactions, plus
        a content-only row for every item with metadata and no learned row, and every row's unit
        content vector. ``learned_elsewhere``: items with a learned row not among ``ids`` (a delta
        snapshot holds only the rows changed since the last one); they get no content-only row."""
        self._refresh_content()
        known = set(ids)
        fresh = [i for i in self.metadata if i not in known and i not in learned_elsewhere]
        all_ids = ids + fresh
        rows = np.fromiter((self._row.get(i, -1) for i in all_ids), dtype=np.int64, count=len(all_ids))
        content = self._content[rows]
        content[rows < 0] = 0.0
        scaled = content * np.float32(self.tower.vector_norm)
        low = np.flatnonzero((counts < self._blend_below) & (rows[: len(ids)] >= 0))
        inputs, outputs = inputs.copy(), outputs.copy()
        if len(low):
            w = learned_weight(counts[low].astype(np.float32), self.config.blend_half_life)[:, None]
            inputs[low] = w * inputs[low] + (1 - w) * scaled[low, : self.dim]
            outputs[low] = w * outputs[low] + (1 - w) * scaled[low, self.dim :]
        return ServedRows(
            all_ids,
            np.vstack([inputs, scaled[len(ids) :, : self.dim]]),
            np.vstack([outputs, scaled[len(ids) :, self.dim :]]),
            np.concatenate([counts, np.zeros(len(fresh), dtype=counts.dtype)]),
            np.concatenate([counts == 0, np.ones(len(fresh), dtype=bool)]),
            content,
        )

    @property
    def encoding(self) -> int:
        """Tower steps at the last re-encoding of every item: content vectors made since are stable
        until it changes (or the item's metadata does)."""
        return self._encoded_at

    def _refresh_content(self) -> None:
        """Encode items not encoded yet, or all of them once the tower has moved enough."""
        if self.tower.steps - self._encoded_at >= self.config.reencode_every_steps:
            self._row.clear()
            self._content = self._content[:0]
            self._encoded_at = self.tower.steps
        missing = [i for i in self.metadata if i not in self._row]
        if not missing:
            return
        if len(self._row) < len(self._content):  # rows of re-observed items: compact before growing
            order = sorted(self._row, key=self._row.__getitem__)
            self._content = self._content[[self._row[i] for i in order]]
            self._row = {item: r for r, item in enumerate(order)}
        start = len(self._content)
        self._content = np.vstack(
            [self._content, self.tower.encode_unit([self.metadata[i] for i in missing])]
        )
        self._row.update((item, start + r) for r, item in enumerate(missing))

    def state(self) -> dict:
        """The learned part (tower, reservoir, temperature evidence, budget) for a checkpoint. The
        metadata is not in it: the items topic is re-read at every start."""
        return {
            "tower": self.tower.state(),
            "reservoir": self.reservoir.state(),
            "temperature": {"loglik": self.temperature.loglik.copy(), "evidence": self.temperature.evidence},
            "budget": self._budget,
            "new_item_events": [[list(prefix), target] for prefix, target in self._new_item_events],
            "calibrations": self._calibrations,
        }

    def restore(self, state: dict) -> None:
        self.tower.restore(state["tower"])
        self.reservoir.restore(state["reservoir"])
        loglik = np.asarray(state["temperature"]["loglik"], dtype=np.float64)
        if loglik.shape != self.temperature.loglik.shape:
            raise ValueError(
                f"cold start state: temperature grid of {loglik.shape}, expected {self.temperature.loglik.shape}"
            )
        self.temperature.loglik = loglik
        self.temperature.evidence = float(state["temperature"]["evidence"])
        self._budget = float(state["budget"])
        self._new_item_events.clear()
        self._new_item_events.extend((tuple(prefix), target) for prefix, target in state["new_item_events"])
        self._calibrations = int(state["calibrations"])
        self._row.clear()  # content vectors are re-encoded with the restored tower
        self._content = self._content[:0]
        self._encoded_at = self.tower.steps

    def record_new_item(self, prefix: Sequence[str], target: str) -> None:
        """A session went on to an item the learner had never seen: evidence for the temperature."""
        if prefix and target in self.metadata:
            self._new_item_events.append((tuple(prefix), target))

    def calibrate_on_content(self, learned: Collection[str]) -> None:
        """``calibrate`` without a served table at hand (the updater publishes deltas): the items
        that were cold when the new-item events arrived are those with metadata and no learned row
        at the last publish, ``learned`` being the items that had one."""
        if not self._new_item_events:
            return
        self._refresh_content()
        ids = [""] * len(self._content)  # "" marks rows of re-observed items, awaiting compaction
        for item, row in self._row.items():
            ids[row] = item
        cold = np.fromiter((bool(i) and i not in learned for i in ids), dtype=bool, count=len(ids))
        no_vectors = np.zeros((len(ids), 0), dtype=np.float32)
        counts = np.zeros(len(ids), dtype=np.int64)
        self.calibrate(Embeddings(ids, no_vectors, no_vectors, counts, cold=cold, content=self._content))

    def calibrate(self, served: Embeddings) -> None:
        """Fit the cold temperature on the new-item events since the last call, scored by ``served``,
        the table that answered them."""
        events = list(self._new_item_events)
        self._new_item_events.clear()
        cold_rows = served.cold_rows
        if served.content is None or len(cold_rows) < 2 or not events:
            return
        queries, targets = [], []
        for prefix, target in events:
            row = served.position.get(target)
            if row is None or not served.cold[row]:
                continue
            query = served.content_query([served.position[i] for i in prefix if i in served.position])
            if query is not None:
                queries.append(query)
                targets.append(row)
        if not queries:
            return
        rng = np.random.default_rng([self.config.seed, self._calibrations])
        self._calibrations += 1
        sample = cold_rows[
            rng.choice(len(cold_rows), min(len(cold_rows), self.config.calibration_candidates), replace=False)
        ]
        q = np.vstack(queries)
        target_rows = np.asarray(targets)
        candidates = q @ served.content[sample].T
        is_target = sample[None, :] == target_rows[:, None]
        candidates[is_target] = -np.inf
        sampled_others = len(sample) - is_target.sum(axis=1)
        log_scale = np.log((len(cold_rows) - 1) / np.maximum(sampled_others, 1))
        target_scores = np.einsum("ij,ij->i", q, served.content[target_rows])
        self.temperature.observe(target_scores, candidates, log_scale)
