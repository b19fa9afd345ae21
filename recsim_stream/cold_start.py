"""Cold start beside the learner: the content tower, trained on items that already have learned
vectors, gives every item with metadata a vector before its first click, and is blended out as the
item's own interactions accumulate.

The tower predicts an item's *pair* of learned vectors, input and output side by side (2 x dim),
because a next-item candidate is scored by its output vector and a query is built from input
vectors: a cold item must be able to play both parts.

Blend (``content_features.blend``): ``w = n / (n + half_life)`` on the learned vector, ``1 - w`` on
the content vector, with ``n`` the item's interaction count (positive pairs it took part in); an
item with no interaction is served from content alone and flagged cold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsim_stream.config import ContentConfig
from recsim_stream.content import ContentTower
from recsim_stream.content_features import learned_weight
from recsim_stream.events import ItemMeta

# Items whose learned weight is above this are served as learned (the content part is negligible).
_BLEND_UNTIL = 0.95


class ColdStart:
    def __init__(self, config: ContentConfig, dim: int, torch_threads: int = 1) -> None:
        self.config = config
        self.dim = dim
        self.tower = ContentTower(config, 2 * dim, torch_threads=torch_threads)
        self.metadata: dict[str, ItemMeta] = {}
        self._rng = np.random.default_rng(config.seed)
        # Interaction count above which the blend leaves the learned vector as it is.
        self._blend_below = int(np.ceil(config.blend_half_life * _BLEND_UNTIL / (1 - _BLEND_UNTIL)))

    def observe_items(self, items: Sequence[ItemMeta]) -> None:
        for item in items:
            self.metadata[item.item_id] = item

    def train(
        self,
        left_ids: Sequence[str],
        right_ids: Sequence[str],
        position: dict[str, int],
        inputs: np.ndarray,
        outputs: np.ndarray,
        batch: int = 256,
    ) -> float | None:
        """One tower step on up to ``batch`` co-occurring pairs whose items both have metadata and
        learned vectors (rows of ``inputs``/``outputs`` at ``position``). None when no pair qualifies."""
        meta = self.metadata
        usable = [
            (a, b) for a, b in zip(left_ids, right_ids, strict=True)
            if a in meta and b in meta and a in position and b in position
        ]
        if len(usable) < 2:
            return None
        if len(usable) > batch:
            chosen = self._rng.choice(len(usable), batch, replace=False)
            usable = [usable[i] for i in chosen]
        left = [position[a] for a, _ in usable]
        right = [position[b] for _, b in usable]
        return self.tower.train_step(
            [meta[a] for a, _ in usable],
            [meta[b] for _, b in usable],
            np.hstack([inputs[left], outputs[left]]),
            np.hstack([inputs[right], outputs[right]]),
        )

    def complete(
        self, ids: list[str], inputs: np.ndarray, outputs: np.ndarray, counts: np.ndarray
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The served table: learned rows blended with content for items with few interactions, plus
        a content-only row for every item with metadata and no learned row. Returns
        (ids, inputs, outputs, counts, cold)."""
        known = set(ids)
        fresh = [i for i in self.metadata if i not in known]
        low = [p for p in np.flatnonzero(counts < self._blend_below).tolist() if ids[p] in self.metadata]
        vectors = self.tower.encode([self.metadata[ids[p]] for p in low] + [self.metadata[i] for i in fresh])
        inputs, outputs = inputs.copy(), outputs.copy()
        if low:
            w = learned_weight(counts[low].astype(np.float32), self.config.blend_half_life)[:, None]
            inputs[low] = w * inputs[low] + (1 - w) * vectors[: len(low), : self.dim]
            outputs[low] = w * outputs[low] + (1 - w) * vectors[: len(low), self.dim :]
        cold_vectors = vectors[len(low) :]
        cold = np.concatenate([counts == 0, np.ones(len(fresh), dtype=bool)])
        return (
            ids + fresh,
            np.vstack([inputs, cold_vectors[:, : self.dim]]),
            np.vstack([outputs, cold_vectors[:, self.dim :]]),
            np.concatenate([counts, np.zeros(len(fresh), dtype=counts.dtype)]),
            cold,
        )
