"""The serving state and its holder: immutable snapshots of indexes swapped by one assignment.

A ``ServingState`` is built completely (arrays, id map, FAISS indexes) off the request path, then
``IndexHolder.swap`` replaces one reference. Each query reads that reference once, so it sees one
whole state even while a swap happens. ``SnapshotWatcher`` is the bridge from disk: it polls the
snapshot directory (which another process writes), builds the next state and swaps it in; a
snapshot that fails to load or fails the recall gate is counted and the old state keeps serving.
A full snapshot normally ships its approximate indexes, built and gated by the snapshotter, and the
watcher only deserialises them; it builds (and gates) them itself only for a snapshot that ships none
(older snapshots, and catalogues under ``index.exact_below``, whose flat indexes are cheap).

Next-item answers mix two of scoring.py's components, as ``recsim-stream eval`` does. *Discovery*
(known items): the approximate index over output vectors with the popularity prior. *New item*
(cold rows, served from the content tower, when the snapshot carries content vectors and a
``new_item_share``): every cold row is scored exactly, by the cosine of its content vector with the
session's content query at the published temperature; that softmax, times the share, is set against
the discovery softmax, times one minus it. Cold rows are therefore left out of the discovery search
(they have no popularity to speak of), and the discovery normaliser, which an approximate index
cannot give, is estimated from the top hits plus a uniform sample of known rows for the tail.

Rows of a state are a *main* part (the full snapshot the approximate indexes were built over, shared
between states of the same base) followed by a *delta* part (rows changed since, indexed exactly).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsim_stream.config import ApiConfig, IndexConfig
from recsim_stream.index import (
    IndexLoadError,
    MergedIndex,
    RecallGateError,
    VectorIndex,
    build_main_indexes,
    inner_products,
    l2_normalise,
    merge_with_delta,
    unship,
)
from recsim_stream.metrics import ApiMetrics
from recsim_stream.scoring import query_with_prior, session_query, with_prior
from recsim_stream.snapshot import (
    KIND_FULL,
    ShippedIndex,
    Snapshot,
    SnapshotArrays,
    SnapshotError,
    SnapshotManifest,
    SnapshotStore,
    apply_delta,
)

log = logging.getLogger(__name__)


class NotReady(Exception):
    """No snapshot has been loaded yet."""


class UnknownItem(KeyError):
    """The item id is not in the served snapshot."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


@dataclass(frozen=True)
class MainBuild:
    """A full snapshot with its two approximate indexes; reused by every state on the same base."""

    version: int
    arrays: SnapshotArrays
    positions: IdLookup
    similar: VectorIndex  # normalised input vectors
    recommend: VectorIndex  # output vectors with the popularity prior (scoring.with_prior)
    recall: Mapping[str, float]
    popularity_power: float  # of the prior in ``recommend``; delta rows get the same
    shipped: bool  # the indexes came with the snapshot (else this process built them)
    # Its cold rows for the new-item component, gathered once per base rather than at every swap
    # (a copy of ~90k x 192 floats per swap at 100k items): positions, content and output vectors.
    cold_positions: np.ndarray
    cold_content: np.ndarray | None
    cold_outputs: np.ndarray


TAIL_SAMPLE = 1024  # known rows sampled to estimate the discovery softmax's normaliser beyond the top hits


class IdLookup(Mapping[str, int]):
    """Item id -> position, through a sorted copy of the ids. Built by numpy in one sort, not a
    Python loop per id: a swap building a dict of 100k ids held the GIL for tens of milliseconds,
    and every query that arrived meanwhile waited."""

    def __init__(self, ids: np.ndarray, offset: int = 0) -> None:
        order = np.argsort(ids, kind="stable")
        self._sorted = ids[order]
        self._positions = order + offset

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Position of each of ``ids``, -1 where absent."""
        if not len(self._sorted):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return np.where(self._sorted[at] == ids, self._positions[at], -1)

    def __getitem__(self, item_id: str) -> int:
        at = int(np.searchsorted(self._sorted, item_id))
        if at < len(self._sorted) and self._sorted[at] == item_id:
            return int(self._positions[at])
        raise KeyError(item_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._sorted.tolist())

    def __len__(self) -> int:
        return len(self._sorted)


@dataclass(frozen=True)
class NewItems:
    """The new-item component of a state: every cold row, scored exactly (a brute-force scan: cold
    rows are the few items not clicked yet; 100k of them x 128 floats is ~13 Mflop a query). The
    rows come in parts (the main's, shared by every state on it, then the delta's); ``dead`` rows of
    the main part (overridden by the delta) score nothing."""

    share: float  # probability that a session goes on to a new item
    temperature: float  # of the softmax over content cosines
    positions: np.ndarray  # (m,) state positions of the cold rows, parts concatenated
    content: tuple[np.ndarray, ...]  # per part (m_i, width): their unit content vectors
    outputs: tuple[np.ndarray, ...]  # per part (m_i, dim): (content-derived) output vectors, for
    # sessions without content
    dead: np.ndarray  # indexes into ``positions`` of rows no longer served
    known_rows: int  # rows in the discovery component
    tail: np.ndarray  # (s, dim + 1) a uniform sample of known rows' ``with_prior`` vectors
    tail_positions: np.ndarray  # (s,) their state positions

    @property
    def size(self) -> int:
        """Cold rows served."""
        return len(self.positions) - len(self.dead)

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
            top = sampled.max()
            parts.append(np.array([np.log(rest) + top + np.log(np.mean(np.exp(sampled - top)))]))
        scores = np.concatenate(parts)
        top = scores.max()
        return float(top + np.log(np.exp(scores - top).sum()))

    def best(
        self, content_query: np.ndarray | None, learned_query: np.ndarray, k: int, banned: set[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(log P(cold row | next item is new), state positions) of the ``k`` most likely cold rows
        not in ``banned``, best first; by the learned dot product when the session has no content
        vector (as scoring.Embeddings falls back). One pass over the cold rows, single-threaded."""
        if content_query is None:
            logits = np.concatenate([inner_products(part, learned_query) for part in self.outputs])
        else:
            logits = np.concatenate([inner_products(part, content_query) for part in self.content])
            logits /= np.float32(self.temperature)
        logits[self.dead] = -np.inf
        top = float(logits.max())
        log_z = top + float(np.log(np.exp(logits - top).sum(dtype=np.float64)))
        fetch = min(len(logits), k + len(banned) + len(self.dead))
        head = np.argpartition(-logits, fetch - 1)[:fetch] if fetch < len(logits) else np.arange(len(logits))
        head = head[np.argsort(-logits[head], kind="stable")]
        served = [i for i in head.tolist() if logits[i] > -np.inf and int(self.positions[i]) not in banned]
        head = np.array(served[:k], dtype=np.int64)
        return logits[head].astype(np.float64) - log_z, self.positions[head]


@dataclass(frozen=True)
class ServingState:
    version: int
    manifest: SnapshotManifest
    main: MainBuild
    delta: SnapshotArrays  # rows changed since main (unique ids; newest version of each)
    positions: Mapping[str, int]  # id -> position; delta positions are offset by the main size
    item_count: int  # distinct ids served (len(positions) would walk both maps)
    similar: MergedIndex
    recommend: MergedIndex  # discovery: known rows only when ``new_items`` is set
    built_at: float  # wall time the state was ready
    build_seconds: float
    new_items: NewItems | None = None

    def row(self, position: int) -> tuple[SnapshotArrays, int]:
        """(arrays, row) that hold ``position``."""
        n_main = self.main.arrays.count
        return (self.main.arrays, position) if position < n_main else (self.delta, position - n_main)

    def input_vector(self, position: int) -> np.ndarray:
        arrays, row = self.row(position)
        return arrays.input_vectors[row]

    def item_id(self, position: int) -> str:
        arrays, row = self.row(position)
        return str(arrays.ids[row])

    def content_query(self, positions: Sequence[int]) -> np.ndarray | None:
        """Unit recency-weighted mean of the content vectors of ``positions`` (oldest first) that have
        one; None when none has (scoring.Embeddings.content_query)."""
        rows = []
        for position in positions:
            arrays, row = self.row(position)
            if arrays.content_vectors is not None and arrays.content_vectors[row].any():
                rows.append(arrays.content_vectors[row])
        if not rows:
            return None
        query = session_query(np.stack(rows))
        norm = float(np.linalg.norm(query))
        return query / norm if norm > 0 else None


def build_main(snapshot: Snapshot, config: IndexConfig, shipped: ShippedIndex | None = None) -> MainBuild:
    """The main indexes of a full snapshot: the ``shipped`` ones (checked against its rows), or, for a
    snapshot that ships none, built and gated here (slow: run off the request path)."""
    arrays = snapshot.arrays
    if shipped is not None:
        indexes = unship(shipped, arrays.count, arrays.dim)
    else:
        with_new_items = serves_new_items(snapshot.manifest.scoring, arrays.content_vectors is not None)
        indexes = build_main_indexes(
            arrays.input_vectors,
            arrays.output_vectors,
            arrays.counts,
            config,
            discovery=~arrays.cold if with_new_items else None,
        )
    cold = np.flatnonzero(arrays.cold)
    return MainBuild(
        snapshot.manifest.version,
        arrays,
        IdLookup(arrays.ids),
        indexes.similar,
        indexes.recommend,
        indexes.recall,
        indexes.popularity_power,
        shipped is not None,
        cold,
        None if arrays.content_vectors is None else np.ascontiguousarray(arrays.content_vectors[cold]),
        np.ascontiguousarray(arrays.output_vectors[cold]),
    )


def build_state(
    main: MainBuild,
    delta: SnapshotArrays,
    manifest: SnapshotManifest,
    config: IndexConfig,
    clock: Callable[[], float] = time.time,
) -> ServingState:
    """Combine a main build with the rows changed since it into a servable state (fast: exact delta)."""
    started = time.perf_counter()
    n_main = main.arrays.count
    overridden = main.positions.positions_of(delta.ids)
    overridden = overridden[overridden >= 0]
    live = np.ones(n_main, dtype=bool)
    live[overridden] = False
    new_items = _new_items(main, delta, live, manifest, config.seed)
    # Cold rows answer through the new-item component only, when there is one.
    discovery = (live, None) if new_items is None else (live & ~main.arrays.cold, ~delta.cold)
    recommend = merge_with_delta(
        main.recommend,
        discovery[0],
        with_prior(delta.output_vectors, delta.counts, main.popularity_power),
        discovery[1],
    )
    return ServingState(
        version=manifest.version,
        manifest=manifest,
        main=main,
        delta=delta,
        positions=ChainMap(IdLookup(delta.ids, offset=n_main), main.positions),
        item_count=n_main - len(overridden) + delta.count,
        similar=merge_with_delta(main.similar, live, l2_normalise(delta.input_vectors)),
        recommend=recommend,
        built_at=clock(),
        build_seconds=time.perf_counter() - started,
        new_items=new_items,
    )


def serves_new_items(scoring: Mapping[str, float] | None, has_content: bool) -> bool:
    """Whether a snapshot with these scoring constants answers for cold rows through the new-item
    component, and so leaves them out of discovery (next-item search over learned rows)."""
    return has_content and float((scoring or {}).get("new_item_share", 0.0)) > 0


def _new_items(
    main_build: MainBuild, delta: SnapshotArrays, live: np.ndarray, manifest: SnapshotManifest, seed: int
) -> NewItems | None:
    """The new-item component, when the snapshot publishes one (content vectors and a share)."""
    main, popularity_power = main_build.arrays, main_build.popularity_power
    scoring = manifest.scoring or {}
    share = float(scoring.get("new_item_share", 0.0))
    temperature = float(scoring.get("cold_temperature", 0.1))
    widths = [a.content_vectors.shape[1] for a in (main, delta) if a.content_vectors is not None]
    if not serves_new_items(scoring, bool(widths)):
        return None
    if not temperature >= 1e-6:  # fitted ones start at 1e-3 (cold_start.py); tinier ones overflow the logits
        raise SnapshotError(
            f"snapshot {manifest.version}: expected cold_temperature >= 1e-6, got {temperature}"
        )

    cold_main, cold_delta = main_build.cold_positions, np.flatnonzero(delta.cold)
    main_content = main_build.cold_content
    if main_content is None:
        main_content = np.zeros((len(cold_main), widths[0]), np.float32)
    delta_content = (
        np.zeros((len(cold_delta), widths[0]), np.float32)
        if delta.content_vectors is None
        else np.ascontiguousarray(delta.content_vectors[cold_delta])
    )
    known_main, known_delta = np.flatnonzero(~main.cold & live), np.flatnonzero(~delta.cold)
    known = len(known_main) + len(known_delta)
    rng = np.random.default_rng([seed, manifest.version])
    sample = np.sort(rng.choice(known, size=min(known, TAIL_SAMPLE), replace=False))
    from_main, from_delta = (
        sample[sample < len(known_main)],
        sample[sample >= len(known_main)] - len(known_main),
    )
    tail_positions = np.concatenate([known_main[from_main], main.count + known_delta[from_delta]])
    tail = np.vstack([
        with_prior(main.output_vectors[known_main[from_main]], main.counts[known_main[from_main]], popularity_power),
        with_prior(delta.output_vectors[known_delta[from_delta]], delta.counts[known_delta[from_delta]], popularity_power),
    ])  # fmt: skip
    return NewItems(
        share=min(share, 1.0 - 1e-6),
        temperature=temperature,
        positions=np.concatenate([cold_main, main.count + cold_delta]),
        content=(main_content, delta_content),
        outputs=(main_build.cold_outputs, np.ascontiguousarray(delta.output_vectors[cold_delta])),
        dead=np.flatnonzero(~live[cold_main]),
        known_rows=known,
        tail=tail,
        tail_positions=tail_positions,
    )


def empty_like(arrays: SnapshotArrays) -> SnapshotArrays:
    content = arrays.content_vectors
    return SnapshotArrays(
        *(
            a[:0]
            for a in (arrays.ids, arrays.input_vectors, arrays.output_vectors, arrays.counts, arrays.cold)
        ),
        content_vectors=None if content is None else content[:0],
    )


class IndexHolder:
    """The one mutable reference of the query service. Readers never lock; swaps are serialised."""

    def __init__(
        self, config: ApiConfig, metrics: ApiMetrics | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._state: ServingState | None = None
        self._swap_lock = threading.Lock()
        if metrics is not None:
            metrics.snapshot_age.set_function(self._snapshot_age)

    @property
    def state(self) -> ServingState | None:
        return self._state

    def swap(self, state: ServingState) -> bool:
        """Serve ``state`` if it is newer than the current one; returns whether it was swapped in."""
        with self._swap_lock:
            if self._state is not None and state.version <= self._state.version:
                return False
            self._state = state
        if self.metrics is not None:
            self.metrics.swaps.inc()
            self.metrics.version.set(state.version)
            self.metrics.items.set(state.item_count)
            for index, recall in state.main.recall.items():
                self.metrics.recall.labels(index=index).set(recall)
            # From the newest covered record's production (its Kafka timestamp, wall clock) to now. Not
            # from event time: a simulator's or a replay's event clock is not the wall clock.
            if state.manifest.newest_record_ts is not None:
                self.metrics.freshness.observe(max(0.0, self._clock() - state.manifest.newest_record_ts))
        return True

    def _current(self) -> ServingState:
        state = self._state
        if state is None:
            raise NotReady("no snapshot loaded yet: the snapshotter has not published one, or none loaded")
        return state

    def _position(self, state: ServingState, item_id: str) -> int:
        position = state.positions.get(item_id)
        if position is None:
            raise UnknownItem(item_id)
        return position

    def similar(self, item_id: str, k: int) -> tuple[int, list[tuple[str, float]]]:
        """(version, the k items whose input vectors are closest in cosine to ``item_id``'s)."""
        state = self._current()
        position = self._position(state, item_id)
        query = l2_normalise(state.input_vector(position))
        scores, positions = state.similar.search(query, k, exclude=np.array([position]))
        return state.version, [(state.item_id(p), float(s)) for s, p in zip(scores, positions, strict=True)]

    def recommend(
        self, items: Sequence[str], k: int, exclude: Sequence[str] = ()
    ) -> tuple[int, list[tuple[str, float]], list[str]]:
        """(version, next-item candidates for a session, the session's unknown items).

        The query is the recency-weighted mean input vector of the session's last ``session_items``
        known items, scored against output vectors plus the popularity prior (the discovery score of
        scoring.py, the one ``recsim-stream eval`` measures). The session's own items and ``exclude``
        are never returned: this endpoint answers "what next that the user has not seen".

        With a new-item component, cold rows join the list by their mixture probability; a cold
        row's score is the discovery score a known item would need to be as likely as it.
        """
        state = self._current()
        known = [(i, state.positions[i]) for i in items if i in state.positions]
        unknown = [i for i in items if i not in state.positions]
        if not known:
            raise UnknownItem(items[0] if items else "")
        recent = [p for _, p in known[-self.config.session_items :]]
        query = query_with_prior(session_query(np.stack([state.input_vector(p) for p in recent])))
        banned = {p for _, p in known} | {state.positions[i] for i in exclude if i in state.positions}
        scores, positions = state.recommend.search(query, k, exclude=np.fromiter(banned, dtype=np.int64))
        if state.new_items is not None and state.new_items.size:
            scores, positions = _with_new_items(
                state, state.new_items, recent, query, scores, positions, banned, k
            )
        return (
            state.version,
            [(state.item_id(p), float(s)) for s, p in zip(scores, positions, strict=True)],
            unknown,
        )

    def item(self, item_id: str) -> tuple[int, dict]:
        state = self._current()
        arrays, row = state.row(self._position(state, item_id))
        return state.version, {
            "item_id": item_id,
            "vector": arrays.input_vectors[row].tolist(),
            "interactions": int(arrays.counts[row]),
            "cold": bool(arrays.cold[row]),
        }

    def snapshot_info(self) -> dict:
        state = self._current()
        m = state.manifest
        return {
            "version": state.version,
            "kind": m.kind,
            "base_version": m.base_version,
            "items": state.item_count,
            "dim": m.dim,
            "created_at": m.created_at,
            "loaded_at": state.built_at,
            "build_seconds": state.build_seconds,
            "index_kind": state.main.similar.kind,
            "index_shipped": state.main.shipped,
            "index_build_seconds": state.main.similar.build_seconds + state.main.recommend.build_seconds,
            "recall": dict(state.main.recall),
            "delta_rows": state.delta.count,
            "newest_event_ts": m.newest_event_ts,
            "newest_record_ts": m.newest_record_ts,
            "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in m.offsets.items()},
            "age_seconds": max(0.0, self._clock() - m.created_at),
        }

    def _snapshot_age(self) -> float:
        state = self._state
        return 0.0 if state is None else max(0.0, self._clock() - state.manifest.created_at)


def _with_new_items(
    state: ServingState,
    new: NewItems,
    recent: list[int],
    query: np.ndarray,
    scores: np.ndarray,
    positions: np.ndarray,
    banned: set[int],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the discovery hits with the best cold rows, ranked by mixture probability:
    ``(1 - c) exp(s) / Z`` for a known row, ``c p_new`` for a cold one, both expressed on the
    discovery scale (``log Z + log(c / (1 - c)) + log p_new``)."""
    log_p, cold_positions = new.best(state.content_query(recent), query[:-1], k, banned)
    cold_scores = new.log_normaliser(query, scores, positions) + np.log(new.share / (1.0 - new.share)) + log_p
    merged_scores = np.concatenate([scores, cold_scores.astype(np.float32)])
    merged_positions = np.concatenate([positions, cold_positions])
    order = np.argsort(-merged_scores, kind="stable")[:k]
    return merged_scores[order], merged_positions[order]


class SnapshotWatcher:
    """Loads each new snapshot version from disk into the holder, from its own thread.

    Works across processes: it only reads the directory the snapshotter writes. An in-process
    snapshotter can call ``notify()`` to skip the wait. A version that fails to load is counted
    once and skipped; the state already served stays live.
    """

    def __init__(self, store: SnapshotStore, holder: IndexHolder, config: IndexConfig, poll_s: float) -> None:
        self.store = store
        self.holder = holder
        self.config = config
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: int | None = None
        self._main: MainBuild | None = None

    def poll_once(self) -> bool:
        """Load and swap in the newest version if it is new; returns whether a swap happened."""
        try:
            version = self.store.latest_version()
        except SnapshotError as exc:
            return self._refuse(None, "corrupt", exc)
        current = self.holder.state
        if version is None or version == self._failed or (current is not None and version <= current.version):
            return False
        try:
            state = self._load(version, current)
        except (SnapshotError, IndexLoadError) as exc:
            return self._refuse(version, "corrupt", exc)
        except RecallGateError as exc:
            return self._refuse(version, "recall", exc)
        return self.holder.swap(state)

    def _load(self, version: int, current: ServingState | None) -> ServingState:
        same_base = current is not None and self._main is not None and current.main is self._main
        chain = self.store.read_chain(version, after=current.version if same_base else None)
        if chain[0].manifest.kind == KIND_FULL:
            base = chain[0].manifest.version
            if self._main is None or self._main.version != base:
                self._main = build_main(chain[0], self.config, self.store.read_index(base))
            delta, rest = empty_like(chain[0].arrays), chain[1:]
        else:  # extends the chain already served
            delta, rest = current.delta, chain
        for snapshot in rest:
            delta = apply_delta(delta, snapshot.arrays)
        return build_state(self._main, delta, chain[-1].manifest, self.config)

    def _refuse(self, version: int | None, reason: str, exc: Exception) -> bool:
        log.warning("snapshot %s refused (%s): %s", version, reason, exc)
        self._failed = version
        if self.holder.metrics is not None:
            self.holder.metrics.refused.labels(reason=reason).inc()
        return False

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # keep serving the old state whatever went wrong
                log.exception("snapshot watcher: unexpected error while loading")
            self._wake.wait(self.poll_s)
            self._wake.clear()
