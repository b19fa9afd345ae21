"""The serving state and its holder: immutable snapshots of indexes swapped by one assignment.

A ``ServingState`` is built completely (arrays, id map, FAISS indexes) off the request path, then
``IndexHolder.swap`` replaces one reference. Each query reads that reference once, so it sees one
whole state even while a swap happens. ``SnapshotWatcher`` is the bridge from disk: it polls the
snapshot directory (which another process writes), builds the next state and swaps it in; a
snapshot that fails to load or fails the recall gate is counted and the old state keeps serving.
A full snapshot normally ships its approximate indexes, built and gated by the snapshotter, and the
watcher only deserialises them; it builds (and gates) them itself only for a snapshot that ships none
(older snapshots, and catalogues under ``index.exact_below``, whose flat indexes are cheap).

A state's rows are the full snapshot's (``delta_log.MainBuild``) followed by the rows published
since, as the base's delta log holds them (``delta_log.DeltaView``).

Next-item answers mix two of scoring.py's components, as ``recsim-stream eval`` does. *Discovery*
(known items): the approximate index over output vectors with the popularity prior. *New item*
(cold rows, when the snapshot carries content vectors and a ``new_item_share``): a softmax over
the cold rows' content cosines with the session (``new_items.NewItems``); that softmax, times the
share (``new_item_share_after_cold`` when the session's last item is cold or not served), is set
against the discovery softmax, times one minus it. Cold rows are therefore left out of the discovery
search (they have no popularity to speak of), and the discovery normaliser, which
an approximate index cannot give, is estimated as the new-item one is: from the top hits plus a
uniform sample of known rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recsim_stream.config import ApiConfig, IndexConfig
from recsim_stream.delta_log import DeltaLog, DeltaView, IdLookup, MainBuild, StatePositions
from recsim_stream.index import (
    IndexLoadError,
    MergedIndex,
    RecallGateError,
    build_cold_index,
    build_main_indexes,
    l2_normalise,
    merge_parts,
    unship,
)
from recsim_stream.metrics import ApiMetrics
from recsim_stream.new_items import BackgroundBuild, MainCold, NewItems, cold_run, serves_new_items
from recsim_stream.next_base import NextBase
from recsim_stream.scoring import query_with_prior, session_query, with_prior
from recsim_stream.snapshot import (
    KIND_FULL,
    ShippedIndex,
    Snapshot,
    SnapshotArrays,
    SnapshotError,
    SnapshotManifest,
    SnapshotStore,
)

log = logging.getLogger(__name__)


class NotReady(Exception):
    """No snapshot has been loaded yet."""


class UnknownItem(KeyError):
    """The item id is not in the served snapshot."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


TAIL_SAMPLE = 1024  # known rows sampled to estimate the discovery softmax's normaliser beyond the top hits


@dataclass(frozen=True)
class ServingState:
    version: int
    manifest: SnapshotManifest
    main: MainBuild
    view: DeltaView  # rows changed since main, as this state sees them
    positions: StatePositions  # id -> position; delta positions are offset by the main size
    item_count: int  # distinct ids served
    similar: MergedIndex
    recommend: MergedIndex  # discovery: known rows only when ``new_items`` is set
    built_at: float  # wall time the state was ready
    build_seconds: float
    new_items: NewItems | None = None

    @property
    def delta(self) -> SnapshotArrays:
        """Every delta row this state holds (an id may have several; ``positions`` names the served one)."""
        return self.view.arrays

    def row(self, position: int) -> tuple[SnapshotArrays, int]:
        """(arrays, row) that hold ``position``."""
        n_main = self.main.arrays.count
        return (self.main.arrays, position) if position < n_main else (self.delta, position - n_main)

    def input_vector(self, position: int) -> np.ndarray:
        arrays, row = self.row(position)
        return arrays.input_vectors[row]

    def learned(self, position: int) -> bool:
        """Whether the row has interactions (is not cold-started)."""
        arrays, row = self.row(position)
        return not arrays.cold[row]

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


def build_main(
    snapshot: Snapshot, config: IndexConfig, shipped: ShippedIndex | None = None, background: bool = True
) -> MainBuild:
    """The main indexes of a full snapshot: the ``shipped`` ones (checked against its rows), or, for a
    snapshot that ships none, built and gated here (slow: run off the request path). The cold rows'
    IVF index is built on a thread of its own (``background``; else here, before returning)."""
    arrays = snapshot.arrays
    with_new_items = serves_new_items(snapshot.manifest.scoring, arrays.content_vectors is not None)
    if shipped is not None:
        indexes = unship(shipped, arrays.count, arrays.dim)
    else:
        indexes = build_main_indexes(
            arrays.input_vectors,
            arrays.output_vectors,
            arrays.counts,
            config,
            discovery=~arrays.cold if with_new_items else None,
        )
    rng = np.random.default_rng([config.seed, snapshot.manifest.version])
    known = np.flatnonzero(~arrays.cold)
    known_sample = rng.permutation(known)[: 4 * TAIL_SAMPLE]
    return MainBuild(
        snapshot.manifest.version,
        arrays,
        IdLookup(arrays.ids),
        indexes.similar,
        indexes.recommend,
        indexes.recall,
        indexes.popularity_power,
        shipped is not None,
        _main_cold(arrays, config, rng, with_new_items, background),
        known_sample,
    )


def _main_cold(
    arrays: SnapshotArrays, config: IndexConfig, rng: np.random.Generator, indexed: bool, background: bool
) -> MainCold:
    positions = np.flatnonzero(arrays.cold)
    content = None
    if arrays.content_vectors is not None:
        content = np.ascontiguousarray(arrays.content_vectors[positions])
    sample = np.sort(
        rng.choice(len(positions), size=min(len(positions), config.cold_tail_sample), replace=False)
    )
    index = None
    if indexed and content is not None and len(positions) >= max(config.exact_below, 1):
        index = BackgroundBuild(
            lambda: build_cold_index(content, config),
            config.api_build_priority,
            name="cold-index-build",
        )
        if not background:
            index.wait()
    return MainCold(
        positions,
        content,
        np.ascontiguousarray(arrays.output_vectors[positions]),
        sample,
        None if content is None else np.ascontiguousarray(content[sample]),
        index,
    )


def build_state(
    main: MainBuild,
    delta: SnapshotArrays,
    manifest: SnapshotManifest,
    config: IndexConfig,
    clock: Callable[[], float] = time.time,
) -> ServingState:
    """A servable state of ``main`` and the rows changed since it, from scratch."""
    return serve_view(DeltaLog(main, config).append([delta]), manifest, config, None, clock)


def serve_view(
    view: DeltaView,
    manifest: SnapshotManifest,
    config: IndexConfig,
    previous: ServingState | None = None,
    clock: Callable[[], float] = time.time,
) -> ServingState:
    """The state that serves ``view`` (fast: what it does is linear in the main rows' count, in
    bytes, and in the view's new rows). ``previous``: the state before, on the same base, whose
    per-base parts are reused."""
    started = time.perf_counter()
    main = view.log.main
    new_items = _new_items(view, manifest, config)
    same = previous is not None and previous.main is main
    if new_items is None:
        discovery_live, discovery_delta = view.main_live, (*view.known_parts, view.cold)
    else:
        discovery_live, discovery_delta = view.main_live & ~main.arrays.cold, view.known_parts
    same_discovery = same and (previous.new_items is None) == (new_items is None)
    return ServingState(
        version=manifest.version,
        manifest=manifest,
        main=main,
        view=view,
        positions=StatePositions(view),
        item_count=view.main_live_rows + view.live_rows,
        similar=merge_parts(main.similar, view.main_live, view.similar, previous.similar if same else None),
        recommend=merge_parts(
            main.recommend, discovery_live, discovery_delta, previous.recommend if same_discovery else None
        ),
        built_at=clock(),
        build_seconds=time.perf_counter() - started,
        new_items=new_items,
    )


def _new_items(view: DeltaView, manifest: SnapshotManifest, config: IndexConfig) -> NewItems | None:
    """The new-item component, when the snapshot publishes one (content vectors and a share)."""
    main = view.log.main
    scoring = manifest.scoring or {}
    share = float(scoring.get("new_item_share", 0.0))
    share_after_cold = float(scoring.get("new_item_share_after_cold", share))  # older snapshots: one share
    temperature = float(scoring.get("cold_temperature", 0.1))
    if not serves_new_items(scoring, view.cold_content is not None):
        return None
    if not temperature >= 1e-6:  # fitted ones start at 1e-3 (cold_start.py); tinier ones overflow the logits
        raise SnapshotError(
            f"snapshot {manifest.version}: expected cold_temperature >= 1e-6, got {temperature}"
        )
    if not 0.0 <= share_after_cold <= 1.0:
        raise SnapshotError(
            f"snapshot {manifest.version}: expected new_item_share_after_cold in [0, 1], got {share_after_cold}"
        )
    known_main = view.main_live_rows - view.main_cold_live
    known = known_main + view.known_live
    size = min(known, TAIL_SAMPLE)
    from_main = round(size * known_main / known) if known else 0
    main_rows = main.known_sample[view.main_live[main.known_sample]][:from_main]
    rng = np.random.default_rng([config.seed, manifest.version])
    delta_rows = np.zeros(0, np.int64)
    if view.known_live and size > from_main:  # uniform over the live known delta rows, by rejection
        drawn = np.unique(rng.integers(0, view.known.size, size=4 * (size - from_main) + 16))
        delta_rows = rng.permutation(drawn[~view.known.dead[drawn]])[: size - from_main]
    tail = np.vstack([
        with_prior(main.arrays.output_vectors[main_rows], main.arrays.counts[main_rows], main.popularity_power),
        view.known.vectors[delta_rows],
    ])  # fmt: skip
    cold_index = None if main.cold.index is None else main.cold.index.ready
    main_run = None
    if cold_index is not None:
        cold = main.cold
        main_run = cold_run(cold_index, cold.positions, view.main_cold_dead, cold.sample, cold.sample_content)
    return NewItems(
        share=min(share, 1.0 - 1e-6),
        share_after_cold=min(max(share_after_cold, 1e-9), 1.0 - 1e-6),
        temperature=temperature,
        main=main.cold,
        main_run=main_run,
        main_dead=view.main_cold_dead,
        main_live=view.main_cold_live,
        delta_runs=view.cold_runs,
        delta_content=view.cold_content,
        delta_outputs=view.cold,
        delta_live=view.cold_live,
        head=config.cold_head,
        known_rows=known,
        tail=tail,
        tail_positions=np.concatenate([main_rows, view.known.position_of(delta_rows)]),
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
            current = self._state
            # Newer: a newer version, or the same version on a newer base (the watcher's switch
            # from a bridged state to the new base it has loaded).
            if current is not None and (state.version, state.main.version) <= (
                current.version,
                current.main.version,
            ):
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
            # (Once per version: a switch to a new base serves no newer record.)
            moved = current is None or state.version > current.version
            if state.manifest.newest_record_ts is not None and moved:
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
        found = state.positions.positions_of([*items, *exclude]).tolist()
        known = [(i, p) for i, p in zip(items, found, strict=False) if p >= 0]
        unknown = [i for i, p in zip(items, found, strict=False) if p < 0]
        if not known:
            raise UnknownItem(items[0] if items else "")
        recent = [p for _, p in known[-self.config.session_items :]]
        query = query_with_prior(session_query(np.stack([state.input_vector(p) for p in recent])))
        banned = {p for _, p in known} | {p for p in found[len(items) :] if p >= 0}
        scores, positions = state.recommend.search(query, k, exclude=np.fromiter(banned, dtype=np.int64))
        if state.new_items is not None and state.new_items.size:
            last = found[len(items) - 1]
            new = state.new_items
            share = new.share if last >= 0 and state.learned(last) else new.share_after_cold
            scores, positions = _with_new_items(
                state, state.new_items, share, recent, query, scores, positions, banned, k
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
            "delta_rows": state.view.live_rows,
            "delta_log_rows": state.delta.count,
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
    share: float,
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
    cold_scores = new.log_normaliser(query, scores, positions) + np.log(share / (1.0 - share)) + log_p
    merged_scores = np.concatenate([scores, cold_scores.astype(np.float32)])
    merged_positions = np.concatenate([positions, cold_positions])
    order = np.argsort(-merged_scores, kind="stable")[:k]
    return merged_scores[order], merged_positions[order]


_CATCH_UP_ROUNDS = 8  # see SnapshotWatcher._base_log
# Ditto. A second new base arriving while one loads is not bridged (_load), so the wait stays well
# under the time between full snapshots (snapshot.full_every x interval_s: 40 s by default).
_SEALING_WAIT_S = 15.0


class SnapshotWatcher:
    """Loads each new snapshot version from disk into the holder, from its own thread.

    Works across processes: it only reads the directory the snapshotter writes. An in-process
    snapshotter can call ``notify()`` to skip the wait. A version that fails to load is counted
    once and skipped; the state already served stays live.

    A new full snapshot (a new *base*) is loaded on a thread of its own (``next_base.NextBase``),
    and until it is ready the deltas of its chain are appended to the served base's log: the
    *bridge*, so that a full snapshot no longer holds every swap for seconds. The bridge serves the
    rows the new chain holds, because the snapshotter publishes a full snapshot with a catch-up
    delta of every row changed since its cut, and every row changed before the cut was published
    on the served chain, whose unserved tail the bridge appends first. Until the switch it leaves
    out rows that changed only as negative samples (deltas skip them) and keeps rows the full
    snapshot dropped. A base that fails to load is counted once and bridged until the next one.
    """

    def __init__(
        self,
        store: SnapshotStore,
        holder: IndexHolder,
        config: IndexConfig,
        poll_s: float,
        load_main: Callable[[int], MainBuild] | None = None,
    ) -> None:
        """``load_main(version)`` builds a full snapshot's ``MainBuild`` (default: from ``store``)."""
        self.store = store
        self.holder = holder
        self.config = config
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: int | None = None
        self._main: MainBuild | None = None
        self._log: DeltaLog | None = None  # the rows appended since ``_main``; its ``last`` is served
        self._load_main = load_main or self._read_main
        # A new base loading off the swap path: its main, and a log with its chain's deltas as far as
        # they were published when the load began (appending a large chain took 11 s at 1M items).
        self._next: NextBase[tuple[DeltaLog, int]] | None = None
        self._bridged: int | None = None  # the new base whose chain the served log takes meanwhile
        self._failed_base: int | None = None

    def _read_main(self, version: int) -> MainBuild:
        return build_main(self.store.read(version), self.config, self.store.read_index(version))

    def poll_once(self) -> bool:
        """Load and swap in the newest version if it is new, or the state of a new base once it is
        loaded; returns whether a swap happened."""
        try:
            version = self.store.latest_version()
        except SnapshotError as exc:
            return self._refuse(None, "corrupt", exc)
        current = self.holder.state
        if version is None or version == self._failed:
            return False
        based = self._next is not None and self._next.done()
        if current is not None and version <= current.version and not based:
            return False
        try:
            state = self._load(version, current)
        except (SnapshotError, IndexLoadError) as exc:
            return self._refuse(version, "corrupt", exc)
        except RecallGateError as exc:
            return self._refuse(version, "recall", exc)
        return state is not None and self.holder.swap(state)

    def wait_for_base(self, timeout: float | None = None) -> bool:
        """Wait for the new base loading, if any; whether none is loading any more (the next poll
        switches to it)."""
        loading = self._next
        return loading is None or loading.wait(timeout)

    def _load(self, version: int, current: ServingState | None) -> ServingState | None:
        """The state serving ``version``, or None while there is nothing new to serve (a new base
        loading, and no delta of its chain to bridge). A swap on the served base appends only the
        snapshots since the served one to the base's delta log; a new base starts a log anew."""
        chain = self.store.read_manifests(version)
        if chain[0].kind != KIND_FULL:
            raise SnapshotError(f"snapshot {version}: its chain starts at delta {chain[0].version}")
        base = chain[0].version
        served = current is not None and self._log is not None and self._log.last is current.view
        if self._main is not None and base == self._main.version:
            if served:
                return self._append([m for m in chain[1:] if m.version > current.version], chain[-1], current)
            return self._rebase(self._main, chain, current)
        if not served:  # nothing to bridge onto: the first snapshot, or after a failed append
            return self._rebase(self._load_main(base), chain, current)
        loading = self._next
        if base != self._failed_base and (loading is None or loading.version != base):
            # No bridge for a second new base while one loads: the served log may lack rows of the
            # first one's chain that the second's catch-up delta does not repeat.
            tail = self._served_tail(current, base) if loading is None else None
            self._next = loading = NextBase(
                base, lambda: self._base_log(chain), self.config.api_build_priority
            )
            if tail is not None:
                self._bridged = base
                return self._append(tail + chain[1:], chain[-1], current)
        if loading is not None and loading.version == base and loading.done():
            self._next = None
            try:
                log, appended = loading.take()
            except (SnapshotError, IndexLoadError, RecallGateError):
                self._failed_base = base
                raise
            self._main, self._log, self._bridged = log.main, log, None
            newer = [m for m in chain[1:] if m.version > appended]
            return self._append(newer, chain[-1], current, anew=True)
        if self._bridged != base:
            return None
        return self._append([m for m in chain[1:] if m.version > current.version], chain[-1], current)

    def _served_tail(self, current: ServingState, base: int) -> list[SnapshotManifest] | None:
        """The served chain's deltas published after ``current`` and before the new ``base`` (the
        watcher may have skipped them); None when they cannot be found (pruned): no bridge then."""
        between = [v for v in self.store.versions() if current.version < v < base]
        if not between:
            return []
        try:
            tail = self.store.read_manifests(between[-1], after=current.version)
        except SnapshotError:
            return None
        return tail if tail[0].parent_version == current.version else None

    def _base_log(self, chain: list[SnapshotManifest]) -> tuple[DeltaLog, int]:
        """A new base's log with the deltas of ``chain`` and of the same chain published while it
        loaded (on the loading thread), and the newest version it holds.

        The switch appends what the log lacks on the watcher's thread, holding every swap meanwhile:
        in a 1M-item run whose new base (a full snapshot published as the catalogue's listing began)
        loaded while 20-30k-row deltas came every second, the API served nothing new for 15 s, most
        likely that append (its served versions show the gap; it was not timed). So the log catches
        up first, for up to ``_CATCH_UP_ROUNDS`` rounds (each takes in what came during the one before).

        Under ``index.api_build_idle`` (the API on cores of its own), after the first round it waits
        (up to ``_SEALING_WAIT_S``) for the builds that leave rows searched exactly until they finish:
        the main cold rows' index (over ~950k rows once a 1M catalogue is listed: seconds) and the
        newest delta rows' runs. Switched to before them, every /recommend scanned those rows exactly
        (950k x 128 content rows: 15-27 ms of CPU on one core, their top hits included); the bridge
        serves meanwhile. Not on shared cores, where those builds are slow and the p99 is ~100 ms
        anyway: a longer load is a longer window for a newer full snapshot to abandon it for (_load)."""
        base = chain[0].version
        log, appended = DeltaLog(self._load_main(base), self.config), base
        for catch_up in range(_CATCH_UP_ROUNDS):
            newer = [m for m in chain[1:] if m.version > appended]
            if newer:
                log.append([self.store.read(m.version).arrays for m in newer])
                appended = newer[-1].version
            if catch_up == 0 and self.config.api_build_idle:
                log.wait_for_sealing(_SEALING_WAIT_S)
            elif not newer:
                break
            try:
                latest = self.store.latest_version()
                chain = self.store.read_manifests(latest) if latest is not None else []
            except SnapshotError:  # pruned or being replaced: the switch appends the rest
                break
            if not chain or chain[0].version != base:  # a newer base already: it will be loaded next
                break
        return log, appended

    def _rebase(
        self, main: MainBuild, chain: list[SnapshotManifest], current: ServingState | None
    ) -> ServingState:
        """A new log on ``main`` with every delta of ``chain``."""
        self._main, self._bridged = main, None
        self._log = DeltaLog(main, self.config)
        return self._append(chain[1:], chain[-1], current, anew=True)

    def _append(
        self,
        deltas: list[SnapshotManifest],
        manifest: SnapshotManifest,
        previous: ServingState | None,
        anew: bool = False,
    ) -> ServingState | None:
        """``deltas`` appended to the served log, as the state serving ``manifest``; None when there
        is nothing to append to a log already served."""
        if not deltas and not anew:
            return None
        log = self._log
        self._log = None  # until the append completes: a failure midway leaves no half-appended log
        view = log.append([self.store.read(m.version).arrays for m in deltas])
        self._log = log
        return serve_view(view, manifest, self.config, previous)

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
        # Appending deltas is background work too: at index.api_build_idle, queries preempt it (1M
        # items, API on CPU 1: p99 13.2-14.4 ms with the builds alone idle, 10.4-12.1 with this thread
        # too in five runs of six: BENCHMARKS.md, eighth session).
        self.config.api_build_priority.apply()
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # keep serving the old state whatever went wrong
                log.exception("snapshot watcher: unexpected error while loading")
            self._wake.wait(self.poll_s)
            self._wake.clear()
