"""The serving state and its holder: immutable snapshots of indexes swapped by one assignment.

A ``ServingState`` is built completely (arrays, id map, FAISS indexes) off the request path, then
``IndexHolder.swap`` replaces one reference. Each query reads that reference once, so it sees one
whole state even while a swap happens. ``SnapshotWatcher`` is the bridge from disk: it polls the
snapshot directory (which another process writes), builds the next state and swaps it in; a
snapshot that fails to load or fails the recall gate is counted and the old state keeps serving.

Rows of a state are a *main* part (the full snapshot the approximate indexes were built over, shared
between states of the same base) followed by a *delta* part (rows changed since, indexed exactly).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsim_stream.config import ApiConfig, IndexConfig
from recsim_stream.index import (
    MergedIndex,
    RecallGateError,
    VectorIndex,
    build_index,
    gate_recall,
    l2_normalise,
    merge_with_delta,
)
from recsim_stream.metrics import ApiMetrics
from recsim_stream.scoring import query_with_prior, session_query, with_prior
from recsim_stream.snapshot import (
    KIND_FULL,
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
    positions: Mapping[str, int]
    similar: VectorIndex  # normalised input vectors
    recommend: VectorIndex  # output vectors with the popularity prior (scoring.with_prior)
    recall: Mapping[str, float]


@dataclass(frozen=True)
class ServingState:
    version: int
    manifest: SnapshotManifest
    main: MainBuild
    delta: SnapshotArrays  # rows changed since main (unique ids; newest version of each)
    positions: Mapping[str, int]  # id -> position; delta positions are offset by the main size
    item_count: int  # distinct ids served (len(positions) would walk both maps)
    similar: MergedIndex
    recommend: MergedIndex
    built_at: float  # wall time the state was ready
    build_seconds: float

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


def build_main(snapshot: Snapshot, config: IndexConfig) -> MainBuild:
    """Build and gate both approximate indexes of a full snapshot (slow: run off the request path)."""
    arrays = snapshot.arrays
    unit_inputs = l2_normalise(arrays.input_vectors)
    similar = build_index(unit_inputs, config)
    outputs = with_prior(arrays.output_vectors, arrays.counts, config.popularity_power)
    recommend = build_index(outputs, config)
    queries = np.hstack([arrays.input_vectors, np.ones((arrays.count, 1), np.float32)])
    recall = {
        "similar": gate_recall(similar, unit_inputs, unit_inputs, config),
        "recommend": gate_recall(recommend, outputs, queries, config),
    }
    positions = {item: i for i, item in enumerate(arrays.ids.tolist())}
    return MainBuild(snapshot.manifest.version, arrays, positions, similar, recommend, recall)


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
    overridden = [main.positions[i] for i in delta.ids.tolist() if i in main.positions]
    live = np.ones(n_main, dtype=bool)
    live[overridden] = False
    delta_positions = {item: n_main + j for j, item in enumerate(delta.ids.tolist())}
    return ServingState(
        version=manifest.version,
        manifest=manifest,
        main=main,
        delta=delta,
        positions=ChainMap(delta_positions, main.positions),
        item_count=n_main - len(overridden) + delta.count,
        similar=merge_with_delta(main.similar, live, l2_normalise(delta.input_vectors), config.merge_margin),
        recommend=merge_with_delta(
            main.recommend, live, with_prior(delta.output_vectors, delta.counts, config.popularity_power),
            config.merge_margin,
        ),
        built_at=clock(),
        build_seconds=time.perf_counter() - started,
    )


def empty_like(arrays: SnapshotArrays) -> SnapshotArrays:
    return SnapshotArrays(
        *(
            a[:0]
            for a in (arrays.ids, arrays.input_vectors, arrays.output_vectors, arrays.counts, arrays.cold)
        )
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
            if state.manifest.newest_event_ts is not None:
                self.metrics.freshness.observe(max(0.0, self._clock() - state.manifest.newest_event_ts))
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
            "index_build_seconds": state.main.similar.build_seconds + state.main.recommend.build_seconds,
            "recall": dict(state.main.recall),
            "delta_rows": state.delta.count,
            "newest_event_ts": m.newest_event_ts,
            "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in m.offsets.items()},
            "age_seconds": max(0.0, self._clock() - m.created_at),
        }

    def _snapshot_age(self) -> float:
        state = self._state
        return 0.0 if state is None else max(0.0, self._clock() - state.manifest.created_at)


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
        except SnapshotError as exc:
            return self._refuse(version, "corrupt", exc)
        except RecallGateError as exc:
            return self._refuse(version, "recall", exc)
        return self.holder.swap(state)

    def _load(self, version: int, current: ServingState | None) -> ServingState:
        same_base = current is not None and self._main is not None and current.main is self._main
        chain = self.store.read_chain(version, after=current.version if same_base else None)
        if chain[0].manifest.kind == KIND_FULL:
            if self._main is None or self._main.version != chain[0].manifest.version:
                self._main = build_main(chain[0], self.config)
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
