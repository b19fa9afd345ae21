"""The new-item component of a serving state: the cold rows a session may go on to, and how likely each is.

Cold rows are served from the content tower when the snapshot carries content vectors and a
``new_item_share``: a softmax over every cold row's content cosine with the session's content
query at the published temperature, whose top rows come from IVF indexes over cold content (the
main snapshot's, the delta's sealed runs) and whose normaliser is estimated from the top hits plus
a uniform sample (``NewItems``). It is a search of its own (its own indexes, built on background
threads, its own normaliser), kept apart so that query.py only mixes its answer with discovery's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from recsim_stream.index import (
    ApproximateRows,
    ExactRows,
    VectorIndex,
    approximate_rows,
    inner_products,
    search_single_threaded,
    top_rows,
)
from recsim_stream.threads import ThreadPriority

log = logging.getLogger(__name__)
T = TypeVar("T")


class BackgroundBuild(Generic[T]):
    """An index (or a grown buffer: delta_log.Appendable) built on a thread of its own, at a lower
    priority, off the swap path (FAISS and numpy's copies release the GIL). ``ready`` is the result once built;
    None until then, and for good if the build failed (logged). Meanwhile what it is to replace
    stays in use: rows searched exactly, the smaller buffer."""

    def __init__(self, build: Callable[[], T | None], priority: ThreadPriority, name: str) -> None:
        self.ready: T | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(build, priority, name), name=name, daemon=True).start()

    def _run(self, build: Callable[[], T | None], priority: ThreadPriority, name: str) -> None:
        try:
            priority.apply()
            self.ready = build()
        except Exception:
            log.exception("background build %s failed: what it was to replace stays in use", name)
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the build finished (successfully or not) within ``timeout`` seconds."""
        return self._done.wait(timeout)


@dataclass(frozen=True)
class MainCold:
    """A full snapshot's cold rows for the new-item component, gathered once per base: their
    positions, content and output vectors, a seeded uniform sample of them (the softmax normaliser's
    tail) and, from ``index.exact_below`` cold rows on, an IVF index over their content vectors."""

    positions: np.ndarray  # (m,) main positions, ascending
    content: np.ndarray | None  # (m, width) unit content vectors; None: the snapshot has none
    outputs: np.ndarray  # (m, dim)
    sample: np.ndarray  # (s,) rows of the above, ascending
    sample_content: np.ndarray | None  # (s, width) their content vectors
    index: BackgroundBuild[VectorIndex] | None

    @property
    def size(self) -> int:
        return len(self.positions)


@dataclass(frozen=True)
class ColdRun:
    """Cold rows searched through an IVF index over their content vectors, as one state serves them:
    the main snapshot's, or a sealed run of the delta's. Made by ``cold_run``."""

    # The index searched without the dead rows, which it selects itself, so a head never comes back
    # short for dead rows. Widening the search instead cost up to 14 searches: rows re-encoded
    # together die together, and a kept 1M-item chain had 16k-18k dead rows in the cells nearest a
    # session, so 1% of /recommend took 78 ms (the breadth doubled up to the million rows).
    rows: ApproximateRows
    dead: np.ndarray  # (m,) bool: no longer served
    sample: np.ndarray  # rows, ascending: a uniform sample for the normaliser's tail
    sample_content: np.ndarray
    start: int  # its first row in the delta's cold table (0 for the main snapshot's cold rows)

    @property
    def index(self) -> VectorIndex:
        return self.rows.index

    @property
    def positions(self) -> np.ndarray:
        """(m,) state positions."""
        return self.rows.positions

    @property
    def live(self) -> int:
        return self.rows.live

    def best(
        self, query: np.ndarray, fetch: int, head: int, temperature: float
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """(estimated log normaliser, logits, positions of the top live rows): the top ``head`` (at
        least ``fetch``) live hits scored exactly, each other live row as the mean over the sampled
        rows outside the head (a uniform sample of them)."""
        if not self.live:
            return -np.inf, np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores, rows = self.index.search(query, min(max(fetch, head), self.live), self.rows.params)
        found = rows[0] >= 0
        logits, rows = scores[0][found] / np.float32(temperature), rows[0][found]
        parts = [logits.astype(np.float64)]
        rest = self.live - len(rows)
        outside = ~self.dead[self.sample] & _outside(self.sample, rows)
        if rest > 0 and outside.any():
            sampled = inner_products(self.sample_content, query)[outside] / np.float32(temperature)
            parts.append(np.array([np.log(rest) + _log_mean_exp(sampled.astype(np.float64))]))
        return _log_sum_exp(np.concatenate(parts)), logits, self.positions[rows]


def cold_run(
    index: VectorIndex,
    positions: np.ndarray,
    dead: np.ndarray,
    sample: np.ndarray,
    sample_content: np.ndarray,
    start: int = 0,
) -> ColdRun:
    """The run of cold rows ``index`` covers (at state ``positions``), searched without its ``dead`` ones."""
    return ColdRun(approximate_rows(index, positions, dead), dead, sample, sample_content, start)


@dataclass(frozen=True)
class NewItems:
    """The new-item component of a state: a softmax over every cold row's content cosine with the
    session's content query (at ``temperature``), or its learned score for sessions without content.

    Cold rows with an IVF index over their content (the main snapshot's from ``index.exact_below``
    of them, once built; the delta's sealed runs) are searched approximately: the top hits are
    scored exactly and the rest of the normaliser estimated from a uniform sample (``ColdRun``), as
    the discovery side does. The others are scored exactly. Sessions without a content vector score
    cold rows by their learned vectors, which no index covers: an indexed run then stands for itself
    by its uniform sample, top hits and normaliser alike (``_sampled``), because scoring every cold
    row took 12-20 ms of CPU at 1M rows, the tail of /recommend's latency."""

    share: float  # probability that a session goes on to a new item, after a learned item
    share_after_cold: float  # the same after a cold item, or one the state does not hold
    temperature: float  # of the softmax over content cosines
    main: MainCold
    main_run: ColdRun | None  # the main cold rows through their IVF over ``main.content``, once built
    main_dead: np.ndarray  # (main.size,) bool: main cold rows no longer served
    main_live: int
    delta_runs: tuple[ColdRun, ...]  # the delta's sealed cold rows, indexed
    delta_content: ExactRows | None  # the delta's other cold rows (their content vectors)
    delta_outputs: ExactRows  # every delta cold row's prior output vectors (scored with a zero prior)
    delta_live: int  # live delta cold rows, runs included
    head: int  # top hits of an indexed run scored exactly per query
    known_rows: int  # rows in the discovery component
    tail: np.ndarray  # (s, dim + 1) a uniform sample of known rows' ``with_prior`` vectors
    tail_positions: np.ndarray  # (s,) their state positions

    @property
    def size(self) -> int:
        """Cold rows served."""
        return self.main_live + self.delta_live

    def log_normaliser(self, query: np.ndarray, head: np.ndarray, head_positions: np.ndarray) -> float:
        """log sum exp of every known row's discovery score: the ``head`` scores exactly, each of
        the other rows as the mean of the sampled rows outside the head (a uniform sample of them)."""
        if not self.known_rows:
            return 0.0
        parts = [head.astype(np.float64)]
        rest = self.known_rows - len(head)
        outside = ~np.isin(self.tail_positions, head_positions)
        if rest > 0 and outside.any():
            sampled = (self.tail[outside] @ query).astype(np.float64)
            parts.append(np.array([np.log(rest) + _log_mean_exp(sampled)]))
        return _log_sum_exp(np.concatenate(parts))

    def best(
        self, content_query: np.ndarray | None, learned_query: np.ndarray, k: int, banned: set[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(log P(cold row | next item is new), state positions) of the ``k`` most likely cold rows
        not in ``banned``, best first; by the learned dot product when the session has no content
        vector (as scoring.Embeddings falls back). Single-threaded."""
        search_single_threaded()
        fetch = k + len(banned)
        parts = [self._best_main(content_query, learned_query, fetch)]
        if content_query is None:
            parts += self._best_delta_learned(learned_query, fetch)
        elif self.delta_content is None:  # a content query, but no delta row has content: cosine 0
            logits = self.delta_outputs.scores(np.append(learned_query, np.float32(0.0)).astype(np.float32))
            parts.append(
                _top_of(np.where(logits > -np.inf, np.float32(0.0), logits), self.delta_outputs, fetch)
            )
        else:
            for run in self.delta_runs:
                parts.append(run.best(content_query, fetch, self.head, self.temperature))
            logits = self.delta_content.scores(content_query) / np.float32(self.temperature)
            parts.append(_top_of(logits, self.delta_content, fetch))
        log_z = _log_sum_exp(np.array([z for z, _, _ in parts]))
        logits = np.concatenate([part[1] for part in parts])
        positions = np.concatenate([part[2] for part in parts])
        order = np.argsort(-logits, kind="stable")
        if banned:
            order = order[~np.isin(positions[order], np.fromiter(banned, np.int64, len(banned)))]
        head = order[:k]
        return logits[head] - log_z, positions[head]

    def _best_main(
        self, content_query: np.ndarray | None, learned_query: np.ndarray, fetch: int
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """(log normaliser, logits, positions of the top live rows) over the main cold rows."""
        cold = self.main
        if not self.main_live:
            return -np.inf, np.zeros(0, np.float32), np.zeros(0, np.int64)
        if content_query is not None and self.main_run is not None:
            return self.main_run.best(content_query, fetch, self.head, self.temperature)
        if content_query is None and self.main_run is not None:
            sample = cold.sample[~self.main_dead[cold.sample]]
            logits = inner_products(cold.outputs[sample], learned_query)
            return _sampled(logits, cold.positions[sample], self.main_live, fetch)
        if content_query is None:
            logits = inner_products(cold.outputs, learned_query)
        elif cold.content is None:
            logits = np.zeros(cold.size, np.float32)
        else:
            logits = inner_products(cold.content, content_query) / np.float32(self.temperature)
        logits[self.main_dead] = -np.inf
        rows = top_rows(logits, fetch)
        rows = rows[logits[rows] > -np.inf]
        return _log_sum_exp(logits), logits[rows], cold.positions[rows]

    def _best_delta_learned(
        self, learned_query: np.ndarray, fetch: int
    ) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """The delta's cold rows by learned score: each sealed run by its sample, the rest exactly."""
        outputs = self.delta_outputs
        query = np.append(learned_query, np.float32(0.0)).astype(np.float32)  # a cold row's prior is 0
        parts = []
        for run in self.delta_runs:
            sample = run.sample[~run.dead[run.sample]]
            logits = inner_products(outputs.vectors[run.start + sample], query)
            parts.append(_sampled(logits, run.positions[sample], run.live, fetch))
        sealed = outputs.size - (outputs.size if self.delta_content is None else self.delta_content.size)
        logits = inner_products(outputs.vectors[sealed:], query)
        if outputs.dead is not None:
            logits[outputs.dead[sealed:]] = -np.inf
        top = top_rows(logits, fetch)
        top = top[logits[top] > -np.inf]
        parts.append((_log_sum_exp(logits), logits[top], outputs.position_of(sealed + top)))
        return parts


def _sampled(
    logits: np.ndarray, positions: np.ndarray, live: int, fetch: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """(log normaliser, logits, positions) of a run of ``live`` rows from a uniform sample of its
    live rows: the sample's top hits, and ``live`` times the sample's mean exp(logit)."""
    if not live or not len(logits):
        return -np.inf, np.zeros(0, np.float32), np.zeros(0, np.int64)
    top = top_rows(logits, fetch)
    return float(np.log(live)) + _log_mean_exp(logits.astype(np.float64)), logits[top], positions[top]


def _outside(sample: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask over ``sample`` (ascending, distinct): True where the entry is not one of ``rows``. A
    binary search of the few head rows; ``np.isin`` sorted and deduplicated both arrays per call, 16%
    of a /recommend's CPU at 1M items (py-spy on scripts/replay_queries.py)."""
    outside = np.ones(len(sample), bool)
    at = np.searchsorted(sample, rows)
    inside = at < len(sample)
    at = at[inside]
    outside[at[sample[at] == rows[inside]]] = False
    return outside


def _top_of(logits: np.ndarray, rows: ExactRows, fetch: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(log sum exp, logits, positions) of the top ``fetch`` finite ``logits`` of ``rows``."""
    top = top_rows(logits, fetch)
    top = top[logits[top] > -np.inf]
    return _log_sum_exp(logits), logits[top], rows.position_of(top)


def _log_sum_exp(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    top = float(values.max()) if len(values) else -np.inf
    if top == -np.inf:
        return -np.inf
    return top + float(np.log(np.exp(values - top).sum()))


def _log_mean_exp(values: np.ndarray) -> float:
    return _log_sum_exp(values) - float(np.log(len(values)))


def serves_new_items(scoring: Mapping[str, float] | None, has_content: bool) -> bool:
    """Whether a snapshot with these scoring constants answers for cold rows through the new-item
    component, and so leaves them out of discovery (next-item search over learned rows)."""
    return has_content and float((scoring or {}).get("new_item_share", 0.0)) > 0
