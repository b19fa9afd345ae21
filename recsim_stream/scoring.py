"""Exact scoring of "next item for this session" over a table of embeddings (numpy, no FAISS).

Discovery: SGNS with negatives drawn from q(j) ~ count^0.75 converges to
``in_i . out_j = log p(j|i) - log(k q(j))``, so ``in . out + power * log count`` is, up to a
constant, the log-probability of j following i. The dot product alone is a PMI that ignores
popularity; on MovieLens-100k it scored HR@20 0.016 against 0.155 with the correction
(``recsim-stream eval``). The query is a recency-weighted mean of the session's last items' *input*
vectors, scored against candidates' *output* vectors, as SGNS trains.

The answer is a mixture of three ways a session goes on, each share estimated online from the
stream itself (``Share``), so each stream gets the mixture it shows:
- re-visit (share ``r``): back to an item viewed earlier in the session, by recency; on the REES46
  sample a large share of next items are re-visits, on MovieLens none are;
- new item (share ``c``): an item never interacted with (cold start), ranked over cold items only (they
  have no popularity to speak of) by the cosine of its content vector with the content vectors of the
  session's last items, at a temperature calibrated online (``cold_start.TemperatureFit``); the
  session's own items are not new to it, so they are left out (as the query API leaves them out),
  which on MovieLens-100k took cold_hr@20 from 0.0081 to 0.0118 and on REES46 from 0.2108 to 0.2154; about
  half of REES46's next items are new, under 2% of MovieLens's. Content against content, because that
  is what the tower's siamese loss trains and it needs no learned vector of the session's items: on
  the REES46 sample it ranked a new target in the top 20 of the cold items 57% of the time with an
  untrained tower, and took the end-to-end cold_hr@20 from 0.0 (learned input . content output) to 0.21;
- discovery (the rest): a known item, by the SGNS score above.
``p = r * p_revisit + c * p_new + (1 - r - c) * p_discovery``.

``c`` is the share of next items the table has not learned (never seen, or first seen since it was
published: the cold rows), and it depends on the session's last item: new items come in runs (a
user working through the long tail), so the share after an item the table has not learned (cold,
or not in it) is estimated apart from the share after a learned one (``learner.Learner``). On
MovieLens-100k, after its first 10,000 events, 15% of next items were new when the session's
previous item had been new itself and 0.5% otherwise (``scripts/new_item_runs.py``); with the split
and the served-state definition, ``recsim-stream eval`` cold_hr@20 went 0.0285 -> 0.0453 at overall
HR@20 0.1664 -> 0.1663, and on REES46 0.5538 -> 0.5589 at 0.4161 -> 0.4194.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SESSION_ITEMS = 3  # how many of the session's last items form the query
RECENCY_DECAY = 0.5  # weight of each older item relative to the next newer one


def session_query(vectors: np.ndarray) -> np.ndarray:
    """Weighted mean of ``vectors`` (oldest first): the newest weighs 1, each older one half as much."""
    weights = RECENCY_DECAY ** np.arange(len(vectors) - 1, -1, -1, dtype=np.float32)
    return (weights @ vectors) / weights.sum()


def content_queries(content: np.ndarray, sessions: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``Embeddings.content_query`` of many sessions at once (rows of ``content``, oldest first):
    (the unit queries, which sessions have one). A session's query is the recency-weighted mean of
    the content rows of its last ``SESSION_ITEMS`` positions that are not all zero (no metadata),
    normalised; it has none when no such row is left or the mean is zero. One numpy pass for all of
    them: the cold temperature's fit asks for hundreds per publish."""
    dim = content.shape[1]
    last = np.full((len(sessions), SESSION_ITEMS), -1, dtype=np.int64)
    for i, positions in enumerate(sessions):
        tail = positions[-SESSION_ITEMS:]
        if len(tail):
            last[i, SESSION_ITEMS - len(tail) :] = tail
    rows = content[np.maximum(last, 0)].reshape(len(sessions), SESSION_ITEMS, dim)
    present = (last >= 0) & rows.any(axis=2)
    # The newest present row weighs 1, each older one RECENCY_DECAY times the next present one.
    newer = np.cumsum(present[:, ::-1], axis=1)[:, ::-1] - present
    weights = np.where(present, np.float32(RECENCY_DECAY) ** newer, 0).astype(np.float32)
    queries = np.einsum("ms,msd->md", weights, rows)
    norms = np.linalg.norm(queries, axis=1)
    have = np.flatnonzero(norms > 0)
    return queries[have] / norms[have, None], have


def popularity_prior(counts: np.ndarray, power: float) -> np.ndarray:
    """``power * log(1 + count)``: what SGNS's negative sampling took out of the dot product."""
    return (power * np.log1p(counts)).astype(np.float32)


def with_prior(outputs: np.ndarray, counts: np.ndarray, power: float) -> np.ndarray:
    """Output vectors with the popularity prior as one more coordinate, so that an inner-product
    index ranks ``[out, prior] . [q, 1]`` = ``out . q + prior``, the discovery score, exactly."""
    return np.hstack([outputs, popularity_prior(counts, power)[:, None]]).astype(np.float32, copy=False)


def query_with_prior(query: np.ndarray) -> np.ndarray:
    """The query that goes with ``with_prior`` vectors."""
    return np.append(query, np.float32(1.0)).astype(np.float32, copy=False)


def _softmax_within(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the entries where ``mask`` holds, zero elsewhere."""
    out = np.zeros_like(logits)
    if mask.any():
        chosen = logits[mask]
        e = np.exp(chosen - chosen.max())
        out[mask] = e / e.sum()
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first."""
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def revisit_distribution(earlier: Sequence[int]) -> dict[int, float]:
    """Probability of each earlier session item (positions, oldest first) by recency, summing to 1."""
    weights: dict[int, float] = {}
    weight = 1.0
    for position in reversed(earlier):
        if position not in weights:
            weights[position] = weight
            weight *= RECENCY_DECAY
    total = sum(weights.values())
    return {p: w / total for p, w in weights.items()}


@dataclass
class Share:
    """Online, Laplace-smoothed estimate of how often something happens when it can happen: e.g.
    P(the next item is an earlier session item | the session has one to return to)."""

    hits: int = 0
    chances: int = 0

    def observe(self, revisit: bool) -> None:
        self.chances += 1
        self.hits += revisit

    @property
    def value(self) -> float:
        return (self.hits + 1) / (self.chances + 2)


class Embeddings:
    """An immutable table: item ids with input and output vectors, interaction counts and the
    scoring constants they were published with."""

    def __init__(
        self,
        ids: list[str],
        inputs: np.ndarray,
        outputs: np.ndarray,
        counts: np.ndarray,
        popularity_power: float = 0.75,
        revisit_share: float = 0.0,
        cold: np.ndarray | None = None,
        new_item_share: float = 0.0,
        content: np.ndarray | None = None,
        cold_temperature: float = 0.1,
        new_item_share_after_cold: float | None = None,
    ) -> None:
        """``content``: unit content vectors, one row per id (a zero row for an item without
        metadata); without it the cold component falls back to the learned dot product.
        ``new_item_share`` applies after a session item the table has learned,
        ``new_item_share_after_cold`` (default: the same) after one it has not (cold, or not in the
        table at all): new items come in runs."""
        if cold_temperature <= 0:
            raise ValueError(f"cold_temperature must be > 0, got {cold_temperature}")
        if content is not None and len(content) != len(ids):
            raise ValueError(f"content must have one row per id ({len(ids)}), got {len(content)}")
        self.ids = ids
        self.inputs = inputs
        self.outputs = outputs
        self.counts = counts
        self.prior = popularity_prior(counts, popularity_power)
        self.revisit_share = revisit_share
        self.cold = np.zeros(len(ids), dtype=bool) if cold is None else cold
        any_cold = bool(self.cold.any())
        self.new_item_share = new_item_share if any_cold else 0.0
        after_cold = new_item_share if new_item_share_after_cold is None else new_item_share_after_cold
        self.new_item_share_after_cold = after_cold if any_cold else 0.0
        self.position = dict(zip(ids, range(len(ids)), strict=True))
        self.content = content
        self.cold_temperature = cold_temperature
        self.cold_rows = np.flatnonzero(self.cold)
        self._cold_content = None if content is None else content[self.cold_rows]

    @classmethod
    def empty(cls, dim: int) -> Embeddings:
        zeros = np.zeros((0, dim), dtype=np.float32)
        return cls([], zeros, zeros, np.zeros(0, dtype=np.int64))

    def recommend(self, session_items: Sequence[str], k: int) -> list[str]:
        positions = [self.position[i] for i in session_items if i in self.position]
        if not positions:
            return []
        dots = self.outputs @ session_query(self.inputs[positions[-SESSION_ITEMS:]])
        cold = self.cold
        new_item_share = self.share_after(session_items[-1])
        probs = _softmax_within(dots + self.prior, ~cold) * (1.0 - new_item_share)
        if new_item_share:
            # The session's own items are not new to it (a return to one is the re-visit component's).
            candidates = cold.copy()
            candidates[positions] = False
            cold_scores = self.cold_scores(positions)
            if cold_scores is None:
                probs += _softmax_within(dots, candidates) * new_item_share
            else:
                probs[self.cold_rows] += (
                    _softmax_within(cold_scores / self.cold_temperature, candidates[self.cold_rows])
                    * new_item_share
                )
        # The last item is never the next one (that would be a repeat, not a new event).
        earlier = [self.position[i] for i in session_items[:-1] if i in self.position]
        if earlier and self.revisit_share > 0:
            probs *= 1.0 - self.revisit_share
            for p, w in revisit_distribution(earlier).items():
                probs[p] += self.revisit_share * w
        return [self.ids[p] for p in top_k(probs, k).tolist()]

    def share_after(self, last_item: str) -> float:
        """The new-item share for a session whose last item is ``last_item``."""
        position = self.position.get(last_item)
        learned = position is not None and not self.cold[position]
        return self.new_item_share if learned else self.new_item_share_after_cold

    def content_query(self, positions: Sequence[int]) -> np.ndarray | None:
        """Unit recency-weighted mean of the content vectors of the session's last items that have
        one (positions oldest first); None when none has."""
        if self.content is None:
            return None
        rows = self.content[list(positions[-SESSION_ITEMS:])]
        rows = rows[rows.any(axis=1)]
        if not len(rows):
            return None
        query = session_query(rows)
        norm = float(np.linalg.norm(query))
        return query / norm if norm > 0 else None

    def cold_scores(self, positions: Sequence[int]) -> np.ndarray | None:
        """Cosine of each cold item (in ``cold_rows`` order) with the session's content query; None
        when the table has no content or the session no item with content."""
        query = self.content_query(positions)
        if query is None or self._cold_content is None:
            return None
        return self._cold_content @ query
