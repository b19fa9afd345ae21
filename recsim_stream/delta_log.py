"""The rows published since a full snapshot, appended to one log shared by the serving states of its base.

Rows of a state are a *main* part (the full snapshot the approximate indexes were built over, shared
between states of the same base: ``MainBuild``) followed by a *delta* part: the rows published since,
appended to a log shared by the states of that base (``DeltaLog``), so a swap costs what the new
delta brings rather than a re-merge of the whole delta since the full. Delta rows are searched
exactly until ``index.exact_below`` of them are left unindexed; then a background build seals them
into an IVF run (``Segments``).
"""

from __future__ import annotations

import math
import mmap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsim_stream.config import IndexConfig
from recsim_stream.index import (
    ApproximateRows,
    ExactRows,
    VectorIndex,
    approximate_rows,
    build_cold_index,
    build_gated_ivf,
    build_gated_mips_ivf,
    l2_normalise,
)
from recsim_stream.new_items import BackgroundBuild, ColdRun, MainCold, cold_run
from recsim_stream.scoring import with_prior
from recsim_stream.snapshot import SnapshotArrays, SnapshotError
from recsim_stream.threads import ThreadPriority


@dataclass(frozen=True)
class Segment:
    """Rows ``start..end`` of a delta table with an approximate index over them and a seeded uniform
    sample of them (for the cold softmax's tail)."""

    start: int
    end: int
    index: VectorIndex
    sample: np.ndarray  # rows, from ``start``
    sample_vectors: np.ndarray


class Segments:
    """Sealed runs of an append-only delta table, indexed on background threads once
    ``index.exact_below`` rows are left unindexed, so the rows searched exactly stay few while the
    delta since the full grows (to 500k+ rows at 1M items).

    Two builds may be in flight: the *tail*, over the newest rows, started whenever that many rows
    are neither sealed nor being sealed; and a *merge* of ready runs, like a binary counter (the
    newest runs are merged while none is larger than all the runs after it together), so n rows make
    O(log n) runs and each row is indexed O(log n) times. A merge never holds back sealing: when the
    tail waited for it, a cascade merge of 808k rows at 1M items (4 s on an idle machine, more under
    load) let the unindexed rows grow from 43k to 129k, each scanned exactly by every query. Owned by
    the writer (the watcher's thread)."""

    def __init__(
        self,
        build: Callable[[np.ndarray, np.ndarray | None], VectorIndex | None],
        config: IndexConfig,
        name: str,
    ) -> None:
        """``build(rows, queries)``: an index over ``rows``, or None if refused; ``queries`` are the
        same rows of the ``queries`` table given to ``refresh`` (None without one)."""
        self.ready: tuple[Segment, ...] = ()  # runs covering rows 0..ready[-1].end, oldest first
        self._build = build
        self._config = config
        self._name = name
        self._tail: BackgroundBuild[Segment] | None = None
        self._merge: BackgroundBuild[Segment] | None = None
        # A tail build refused (its recall gate): the rows after the ready runs stay exact for this
        # base, rather than leave a gap that neither a run nor the exact rows would cover. A merge
        # refused leaves its runs as they were, and no other merge is tried on this base.
        self._tail_refused = False
        self._merge_refused = False

    def refresh(self, table: np.ndarray, queries: np.ndarray | None = None) -> tuple[Segment, ...]:
        """Take in finished builds and start the ones due; returns the runs ready now. ``queries``:
        a table of query rows for the recall gate, row for row with ``table``."""
        if self._merge is not None and self._merge.wait(0):
            merged, self._merge = self._merge.ready, None
            if merged is None:
                self._merge_refused = True
            else:
                older = tuple(run for run in self.ready if run.end <= merged.start)
                newer = tuple(run for run in self.ready if run.start >= merged.end)
                self.ready = (*older, merged, *newer)
        if self._tail is not None and self._tail.wait(0):
            sealed, self._tail = self._tail.ready, None
            if sealed is None:
                self._tail_refused = True
            else:
                self.ready = (*self.ready, sealed)
        end = self.ready[-1].end if self.ready else 0
        if self._tail is None and not self._tail_refused and len(table) - end >= self._config.delta_seal_rows:
            self._tail = self._start(table, queries, end, len(table))
        if self._merge is None and not self._merge_refused:
            merge = _binary_counter_merge(self.ready)
            if merge is not None:
                self._merge = self._start(table, queries, *merge)
        return self.ready

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the builds in flight (if any) finished within ``timeout`` seconds each."""
        return all(build is None or build.wait(timeout) for build in (self._tail, self._merge))

    def wait_for_tail(self, timeout: float | None = None) -> bool:
        """Whether the newest rows' build (if any) finished within ``timeout`` seconds: a merge in
        flight leaves its runs searched through their own indexes, a tail leaves its rows exact."""
        return self._tail is None or self._tail.wait(timeout)

    def _start(
        self, table: np.ndarray, queries: np.ndarray | None, start: int, end: int
    ) -> BackgroundBuild[Segment]:
        rows = table[start:end]  # rows never rewritten: the build reads them while more are appended
        asked = None if queries is None else queries[start:end]
        return BackgroundBuild(
            lambda: self._segment(rows, asked, start), self._config.api_build_priority, self._name
        )

    def _segment(self, rows: np.ndarray, queries: np.ndarray | None, start: int) -> Segment | None:
        index = self._build(rows, queries)
        if index is None:
            return None
        rng = np.random.default_rng([self._config.seed, start, len(rows)])
        sample = np.sort(
            rng.choice(len(rows), size=min(len(rows), self._config.cold_tail_sample), replace=False)
        )
        return Segment(start, start + len(rows), index, sample, np.ascontiguousarray(rows[sample]))


def _binary_counter_merge(runs: tuple[Segment, ...]) -> tuple[int, int] | None:
    """The rows (start, end) of the newest runs to merge into one: each older run joins while it is
    no larger than the runs after it together; None when that takes in fewer than two runs."""
    if len(runs) < 2:
        return None
    start, newer = runs[-1].start, runs[-1].end - runs[-1].start
    for run in reversed(runs[:-1]):
        size = run.end - run.start
        if size > newer:
            break
        start, newer = run.start, newer + size
    return None if start == runs[-1].start else (start, runs[-1].end)


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
    cold: MainCold
    known_sample: np.ndarray  # (s,) positions of known rows in a seeded random order (discovery tail)


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
        return _find(self._sorted, self._positions, ids)

    def __getitem__(self, item_id: str) -> int:
        at = int(np.searchsorted(self._sorted, item_id))
        if at < len(self._sorted) and self._sorted[at] == item_id:
            return int(self._positions[at])
        raise KeyError(item_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._sorted.tolist())

    def __len__(self) -> int:
        return len(self._sorted)


def _find(sorted_ids: np.ndarray, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``values`` of each of ``ids`` in ``sorted_ids`` (distinct), -1 where absent. ``searchsorted``
    and the string comparison release the GIL, unlike a Python loop over the ids. ``ids`` wider
    than ``sorted_ids`` are cast down, those too long to be there left out: numpy would otherwise
    widen the whole sorted array per call, a string cast that holds the GIL (~10 ms a million ids)."""
    found = np.full(len(ids), -1, dtype=np.int64)
    if not len(sorted_ids) or not len(ids):
        return found
    fits = np.ones(len(ids), bool)
    if ids.dtype.itemsize > sorted_ids.dtype.itemsize:
        fits = np.char.str_len(ids) <= sorted_ids.dtype.itemsize // 4
    wanted = ids[fits].astype(sorted_ids.dtype)
    at = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    found[fits] = np.where(sorted_ids[at] == wanted, values[at], -1)
    return found


CAST_SLICE = 1 << 16  # ids cast per numpy call: a string cast holds the GIL


def _cast(ids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``ids`` as ``dtype`` (wider strings), cast a slice at a time so other threads get the GIL between."""
    if ids.dtype == dtype:
        return ids
    out = np.empty(len(ids), dtype)
    for at in range(0, len(ids), CAST_SLICE):
        out[at : at + CAST_SLICE] = ids[at : at + CAST_SLICE]
    return out


REMOVED = -2  # the row of an id a delta removed: served neither from a delta row nor from the main


@dataclass(frozen=True)
class IdRun:
    """The distinct ids of a run of consecutive delta rows, sorted, each with its newest row in the run."""

    ids: np.ndarray  # (k,) sorted, distinct
    rows: np.ndarray  # (k,) int64
    covered: int  # delta rows the run stands for: what decides merges

    @classmethod
    def of(cls, ids: np.ndarray, start: int, removed: np.ndarray | None = None) -> tuple[IdRun, np.ndarray]:
        """The run of rows ``start, start + 1, ...`` holding ``ids``, with ``removed`` ids mapped to
        ``REMOVED``, and the rows in it that a later row of the same id supersedes (a delta names
        each id once, and removes none it writes, but nothing on the read path checks that: a row
        wins over a removal, as in ``snapshot.apply_delta``)."""
        rows = start + np.arange(len(ids))
        if removed is not None and len(removed):
            ids = np.concatenate([removed.astype(np.result_type(ids, removed), copy=False), ids])
            rows = np.concatenate([np.full(len(removed), REMOVED), rows])
        order = np.argsort(ids, kind="stable")  # equal ids stay in row order: the last is the newest
        ordered = ids[order]
        last = np.ones(len(ids), bool)
        last[:-1] = ordered[1:] != ordered[:-1]
        superseded = rows[order[~last]]
        return cls(ordered[last], rows[order[last]], len(ids)), superseded[superseded >= 0]

    def then(self, newer: IdRun) -> IdRun:
        """This run followed by ``newer``: its rows win for the ids both hold. A merge of two sorted
        arrays (``searchsorted`` and scatters), linear in their sizes, without sorting again."""
        dtype = np.result_type(self.ids, newer.ids)
        older_ids, newer_ids = _cast(self.ids, dtype), _cast(newer.ids, dtype)
        at = np.searchsorted(older_ids, newer_ids)
        keep = np.ones(len(older_ids), bool)
        if len(older_ids):
            hit = np.minimum(at, len(older_ids) - 1)
            keep[hit[older_ids[hit] == newer_ids]] = False  # ids the newer run holds too
        dropped_before = np.concatenate([[0], np.cumsum(~keep)])
        slots = at - dropped_before[at] + np.arange(len(newer.ids))  # newer's places in the merged run
        n = int(keep.sum()) + len(newer.ids)
        ids, rows = np.empty(n, dtype), np.empty(n, np.int64)
        older = np.ones(n, bool)
        older[slots] = False
        ids[slots], rows[slots] = newer_ids, newer.rows
        ids[older], rows[older] = older_ids[keep], self.rows[keep]
        return IdRun(ids, rows, self.covered + newer.covered)


@dataclass(frozen=True)
class IdRuns:
    """Item id -> newest delta row, as one state sees it: sorted runs of ids, the newest last, merged
    like a binary counter (a run takes in the one before it when that one covers no more rows), so
    n rows make O(log n) runs and each row is merged O(log n) times. Immutable: an append returns
    new runs, and a state keeps the ones it was built with.

    It replaced two dicts (id -> newest row, row -> previous row of its id) updated per swap: their
    per-id Python loops and their resizes (one C call rehashing every id: ~150 ms at 1M ids) held
    the GIL against queries; searches and merges of sorted arrays release it."""

    runs: tuple[IdRun, ...] = ()

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The newest row of each of ``ids``, -1 where none, ``REMOVED`` where a delta removed it since."""
        found = np.full(len(ids), -1, dtype=np.int64)
        for run in reversed(self.runs):
            missing = np.flatnonzero(found == -1)
            if not len(missing):
                break
            found[missing] = _find(run.ids, run.rows, ids[missing])
        return found

    def row_of(self, item_id: str) -> int:
        """The newest row of ``item_id``, -1 where none, ``REMOVED`` where a delta removed it since."""
        for run in reversed(self.runs):
            at = int(np.searchsorted(run.ids, item_id))
            if at < len(run.ids) and run.ids[at] == item_id:
                return int(run.rows[at])
        return -1

    def appended(self, run: IdRun) -> IdRuns:
        runs = [*self.runs, run]
        while len(runs) > 1 and runs[-2].covered <= runs[-1].covered:
            newer = runs.pop()
            runs[-1] = runs[-1].then(newer)
        return IdRuns(tuple(runs))


class Appendable:
    """A growing array whose filled rows are never rewritten: a view of rows ``[0, n)`` stays valid
    and unchanged while rows are appended after it (into the same buffer, or into a larger copy), so
    a state in flight keeps exactly the rows it was built with. Capacity doubles: O(1) a row.

    ``reserve`` rows are allocated up front: address space only (the kernel backs a page when it is
    first written), because copying a grown buffer was the slow part of a swap: a 128-float column
    of 262k rows took 380 ms to copy on this VM, where appending 5k rows takes 0.2 ms.

    ``isolated`` (a service with cores of its own; DeltaLog passes it under ``index.api_build_idle``):
    the doubled buffer is made ahead, once three quarters are filled, on a thread of that priority
    (numpy copies without the GIL), and the writer only copies the rows appended since: a 1M-item
    listing outgrew a base's reserve, and the 14 columns' copies held the watcher's swaps for
    3.5-3.9 s while taking the query API's core. And buffers are on base pages (``_lazy_buffer``):
    numpy asks for transparent huge pages for large arrays, and with the kernel's default
    ``defrag=madvise`` a first write into one may compact memory synchronously. Replaying a kept
    1M-item chain, the writer's appends took 130 ms a swap with huge pages and 28 ms without, pinned
    to one core with a query thread. On cores shared with training both cost freshness instead
    (BENCHMARKS.md, eighth session)."""

    def __init__(
        self,
        dtype: np.dtype | type,
        row_shape: tuple[int, ...] = (),
        reserve: int = 0,
        isolated: ThreadPriority | None = None,
    ) -> None:
        self._isolated = isolated
        self._buffer = _lazy_buffer((reserve, *row_shape), dtype, isolated is not None)
        self._n = 0
        self._ahead: BackgroundBuild[tuple[np.ndarray, int]] | None = None  # (larger buffer, rows copied)

    def __len__(self) -> int:
        return self._n

    @property
    def view(self) -> np.ndarray:
        return self._buffer[: self._n]

    def extend(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        need = self._n + len(rows)
        dtype = self._buffer.dtype
        if dtype.kind == "U" and rows.dtype.itemsize > dtype.itemsize:
            dtype = rows.dtype  # an id longer than any before: wider strings from here on
        if self._ahead is not None and (need > len(self._buffer) or self._ahead.wait(0)):
            self._take_ahead(dtype)
        if need > len(self._buffer) or dtype != self._buffer.dtype:
            self._buffer = _larger_copy(self._buffer, self._n, need, dtype, self._isolated is not None)
        self._buffer[self._n : need] = rows
        self._n = need
        if self._isolated is not None and self._ahead is None and 4 * need > 3 * len(self._buffer):
            self._ahead = BackgroundBuild(
                lambda old=self._buffer, n=need: (_larger_copy(old, n, n, old.dtype, True), n),
                self._isolated,
                "delta-grow",
            )

    def _take_ahead(self, dtype: np.dtype) -> None:
        """Adopt the buffer grown ahead (waiting for it), with the rows appended since its copy."""
        ahead, self._ahead = self._ahead, None
        ahead.wait()
        if ahead.ready is None or ahead.ready[0].dtype != dtype:
            return  # failed, or strings grew wider meanwhile: extend grows as it would have
        grown, copied = ahead.ready
        grown[copied : self._n] = self._buffer[copied : self._n]
        self._buffer = grown


def _larger_copy(buffer: np.ndarray, n: int, need: int, dtype: np.dtype, base_pages: bool) -> np.ndarray:
    """A buffer of ``dtype`` for ``need`` rows or twice ``buffer``'s, holding its rows ``[0, n)``."""
    grown = _lazy_buffer((max(need, 2 * len(buffer), 1024), *buffer.shape[1:]), dtype, base_pages)
    grown[:n] = buffer[:n]
    return grown


def _lazy_buffer(shape: tuple[int, ...], dtype: np.dtype | type, base_pages: bool) -> np.ndarray:
    """``np.empty(shape, dtype)``, backed page by page as it is written; with ``base_pages``, on base
    pages where the platform lets us say so (Appendable says why)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if not base_pages or size < _LAZY_FROM_BYTES or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.empty(shape, dtype)
    region = mmap.mmap(-1, size)  # anonymous, private, zero-filled on first touch
    region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype).reshape(shape)


_LAZY_FROM_BYTES = 4 << 20  # numpy asks for huge pages from this size on


@dataclass(frozen=True)
class DeltaView:
    """The rows changed since a main build as one state sees them: prefixes of the base's
    ``DeltaLog`` (shared, never rewritten) and masks of what later rows superseded (copied per
    state: a byte a row, where the rows themselves were copied per swap before)."""

    log: DeltaLog
    ids: IdRuns  # id -> newest row among ``arrays``
    arrays: SnapshotArrays  # every row appended so far; an id may have several rows, the last is served
    superseded: np.ndarray  # (n,) bool: a later row has the same id
    main_live: np.ndarray  # (main rows,) bool: no delta row overrides it
    main_cold_dead: np.ndarray  # (main cold rows,) bool: overridden main cold rows
    similar: tuple[ApproximateRows | ExactRows, ...]  # unit input vectors of every row: sealed runs, the rest
    known: ExactRows  # prior output vectors of the non-cold rows
    known_parts: tuple[ApproximateRows | ExactRows, ...]  # the same rows as searched: sealed runs, the rest
    cold: ExactRows  # prior output vectors of the cold rows
    cold_runs: tuple[ColdRun, ...]  # sealed runs of the cold rows, searched by content
    cold_content: ExactRows | None  # content vectors of the cold rows after the runs
    live_rows: int  # rows not superseded (distinct ids)
    main_live_rows: int
    main_cold_live: int
    known_live: int
    cold_live: int


class DeltaLog:
    """Every row published since one main build, appended in snapshot order and never rewritten,
    with the tables the API searches; shared by the states on that base, written by one thread (the
    watcher). A swap appends what the new delta brings: before, it re-merged the whole delta since
    the full (``np.isin`` over ids, flat indexes and id lookup rebuilt; ~0.3 s at 63k rows, holding
    the GIL against queries). Ids are found through ``ids`` (``IdRuns``; each view keeps its own).
    """

    def __init__(self, main: MainBuild, config: IndexConfig) -> None:
        self.main = main
        arrays, dim = main.arrays, main.arrays.dim
        self.ids = IdRuns()
        self.last: DeltaView | None = None  # the newest view: the next append extends it
        # Room for as many rows as the main has (the snapshotter publishes a full once half of them
        # changed: snapshot.full_after_changed; rows of ids changed again come on top), and at least
        # index.delta_reserve_rows: a small early base under a bulk listing outgrew its room eight
        # times on the way to 1M rows, each growth a copy of every column holding the GIL for up to 2 s.
        self._reserve = max(4096, arrays.count, config.delta_reserve_rows)
        # Grown ahead, on base pages, only under SCHED_IDLE: on cores shared with training, 14 columns
        # copied at once in the background made 1M-item freshness p95 9-13 s in four runs, 4.7 s growing
        # in place (Appendable).
        self._isolated = config.api_build_priority if config.api_build_idle else None
        self._ids = self._column(arrays.ids.dtype)
        self._inputs = self._column(np.float32, (dim,))
        self._outputs = self._column(np.float32, (dim,))
        self._counts, self._cold = self._column(np.int64), self._column(np.bool_)
        self._unit_inputs = self._column(np.float32, (dim,))
        self._known, self._known_at = self._column(np.float32, (dim + 1,)), self._column(np.int64)
        # Each known row's own input vector with a 1 appended: a query of the kind the row answers
        # (a session's mean input vector and the prior's weight), for its run's recall gate.
        self._known_queries = self._column(np.float32, (dim + 1,))
        self._cold_prior = self._column(np.float32, (dim + 1,))
        self._cold_at = self._column(np.int64)
        self._table_row = self._column(np.int64)  # each row's row in the known or the cold table
        self._content: Appendable | None = None
        self._cold_content: Appendable | None = None
        self._similar_runs = Segments(
            lambda rows, _: build_gated_ivf(rows, config), config, "delta-similar-build"
        )
        self._cold_runs = Segments(lambda rows, _: build_cold_index(rows, config), config, "delta-cold-build")
        self._known_runs = Segments(
            lambda rows, queries: build_gated_mips_ivf(rows, queries, config), config, "delta-known-build"
        )
        if arrays.content_vectors is not None:
            self._add_content(arrays.content_vectors.shape[1])

    def _column(self, dtype: np.dtype | type, row_shape: tuple[int, ...] = ()) -> Appendable:
        return Appendable(dtype, row_shape, self._reserve, self._isolated)

    def _add_content(self, width: int) -> None:
        """Content columns, zero for the rows appended before any came (as ``apply_delta`` fills)."""
        self._content = self._column(np.float32, (width,))
        self._cold_content = self._column(np.float32, (width,))
        self._content.extend(np.zeros((len(self._ids), width), np.float32))
        self._cold_content.extend(np.zeros((len(self._cold_at), width), np.float32))

    def append(self, deltas: Sequence[SnapshotArrays]) -> DeltaView:
        """Append each delta's rows (oldest first) and return the view of a state that serves them."""
        self._check(deltas)
        superseded, overridden = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for delta in deltas:
            before, in_main = self._append(delta)
            superseded.append(before)
            overridden.append(in_main)
        self.last = self._view(np.concatenate(superseded), np.concatenate(overridden))
        return self.last

    def _check(self, deltas: Sequence[SnapshotArrays]) -> None:
        """Refuse deltas that cannot extend this log, before any row is appended."""
        for delta in deltas:
            if delta.dim != self.main.arrays.dim:  # even without rows: the arrays could not be stacked
                raise SnapshotError(
                    f"delta: expected dim {self.main.arrays.dim} like its base, got {delta.dim}"
                )
        contents = [d.content_vectors for d in deltas] + [
            None if self._content is None else self._content.view
        ]
        widths = sorted({c.shape[1] for c in contents if c is not None})
        if len(widths) > 1:
            raise SnapshotError(f"delta: expected content vectors of one width, got widths {widths}")

    def _append(self, delta: SnapshotArrays) -> tuple[np.ndarray, np.ndarray]:
        """Append one delta; returns (rows it supersedes, main positions it overrides). An id it
        removes supersedes its row as a new row would, and has none after."""
        start, m = len(self._ids), delta.count
        run, repeated = IdRun.of(delta.ids, start, delta.removed_ids)
        before = self.ids.rows_of(run.ids)
        in_main = self.main.positions.positions_of(run.ids[before == -1])  # REMOVED: gone already
        self.ids = self.ids.appended(run)
        if delta.content_vectors is not None and self._content is None:
            self._add_content(delta.content_vectors.shape[1])
        cold = delta.cold
        known_rows, cold_rows = np.flatnonzero(~cold), np.flatnonzero(cold)
        table_row = np.empty(m, np.int64)
        table_row[known_rows] = len(self._known_at) + np.arange(len(known_rows))
        table_row[cold_rows] = len(self._cold_at) + np.arange(len(cold_rows))
        prior = with_prior(delta.output_vectors, delta.counts, self.main.popularity_power)
        n_main = self.main.arrays.count
        self._ids.extend(delta.ids)
        self._inputs.extend(delta.input_vectors)
        self._outputs.extend(delta.output_vectors)
        self._counts.extend(delta.counts)
        self._cold.extend(cold)
        self._unit_inputs.extend(l2_normalise(delta.input_vectors))
        self._known.extend(prior[known_rows])
        inputs = delta.input_vectors[known_rows]
        self._known_queries.extend(np.hstack([inputs, np.ones((len(inputs), 1), np.float32)]))
        self._known_at.extend(n_main + start + known_rows)
        self._cold_prior.extend(prior[cold_rows])
        self._cold_at.extend(n_main + start + cold_rows)
        self._table_row.extend(table_row)
        if self._content is not None:
            content = delta.content_vectors
            if content is None:
                content = np.zeros((m, self._content.view.shape[1]), np.float32)
            self._content.extend(content)
            self._cold_content.extend(content[cold_rows])
        return np.concatenate([before[before >= 0], repeated]), in_main[in_main >= 0]

    def _view(self, superseded_rows: np.ndarray, overridden: np.ndarray) -> DeltaView:
        previous, main = self.last, self.main
        n_main = main.arrays.count
        cold, table_row = self._cold.view, self._table_row.view
        superseded = _grown(None if previous is None else previous.superseded, len(self._ids))
        superseded[superseded_rows] = True
        main_live = np.ones(n_main, bool) if previous is None else previous.main_live.copy()
        newly_dead = overridden[main_live[overridden]]
        main_live[newly_dead] = False
        main_cold_dead = (
            np.zeros(main.cold.size, bool) if previous is None else previous.main_cold_dead.copy()
        )
        at = np.searchsorted(main.cold.positions, newly_dead)
        was_cold = at < main.cold.size
        was_cold[was_cold] = main.cold.positions[at[was_cold]] == newly_dead[was_cold]
        main_cold_dead[at[was_cold]] = True
        known_dead = _grown(None if previous is None else previous.known.dead, len(self._known_at))
        cold_dead = _grown(None if previous is None else previous.cold.dead, len(self._cold_at))
        dead_cold = cold[superseded_rows]
        known_dead[table_row[superseded_rows[~dead_cold]]] = True
        cold_dead[table_row[superseded_rows[dead_cold]]] = True
        content = None if self._content is None else self._content.view
        arrays = SnapshotArrays(
            self._ids.view, self._inputs.view, self._outputs.view, self._counts.view, cold, content
        )
        cold_at = self._cold_at.view
        n, old = len(self._ids), (0, 0, 0, 0, 0, 0) if previous is None else _counts_of(previous)
        similar, sealed = self._similar_parts(superseded, n_main)
        cold_runs, cold_sealed = self._cold_parts(cold_dead, cold_at)
        n_known, n_cold = len(self._known_at), len(cold_at)
        return DeltaView(
            log=self,
            ids=self.ids,
            arrays=arrays,
            superseded=superseded,
            main_live=main_live,
            main_cold_dead=main_cold_dead,
            similar=similar,
            known=ExactRows(self._known.view, self._known_at.view, known_dead),
            known_parts=self._known_parts(known_dead),
            cold=ExactRows(self._cold_prior.view, cold_at, cold_dead),
            cold_runs=cold_runs,
            cold_content=None
            if content is None
            else ExactRows(
                self._cold_content.view[cold_sealed:], cold_at[cold_sealed:], cold_dead[cold_sealed:]
            ),
            live_rows=old[0] + (n - old[1]) - len(superseded_rows),
            main_live_rows=(n_main if previous is None else previous.main_live_rows) - len(newly_dead),
            main_cold_live=(main.cold.size if previous is None else previous.main_cold_live)
            - int(was_cold.sum()),
            known_live=old[2] + (n_known - old[3]) - int((~dead_cold).sum()),
            cold_live=old[4] + (n_cold - old[5]) - int(dead_cold.sum()),
        )

    def _similar_parts(
        self, superseded: np.ndarray, n_main: int
    ) -> tuple[tuple[ApproximateRows | ExactRows, ...], int]:
        """The similar table as (sealed runs, the rows after them searched exactly), and where those start."""
        runs = self._similar_runs.refresh(self._unit_inputs.view)
        sealed = runs[-1].end if runs else 0
        parts = [
            approximate_rows(r.index, None, superseded[r.start : r.end], offset=n_main + r.start)
            for r in runs
        ]
        tail = ExactRows(self._unit_inputs.view[sealed:], None, superseded[sealed:], offset=n_main + sealed)
        return (*parts, tail), sealed

    def _known_parts(self, dead: np.ndarray) -> tuple[ApproximateRows | ExactRows, ...]:
        """The known table as searched: sealed runs (maximum inner product IVF), the rows after them exactly.
        Without runs, every learned row since the full was scanned per query: /recommend's latency
        grew with the delta (3-4 ms to 6-12 ms over a minute at 1M items, the API on a core of its own)."""
        runs = self._known_runs.refresh(self._known.view, self._known_queries.view)
        at, sealed = self._known_at.view, runs[-1].end if runs else 0
        parts = [approximate_rows(r.index, at[r.start : r.end], dead[r.start : r.end]) for r in runs]
        return (*parts, ExactRows(self._known.view[sealed:], at[sealed:], dead[sealed:]))

    def _cold_parts(self, dead: np.ndarray, positions: np.ndarray) -> tuple[tuple[ColdRun, ...], int]:
        """The cold table's sealed runs (searched by content), and where the rows after them start."""
        if self._cold_content is None:
            return (), 0
        runs = self._cold_runs.refresh(self._cold_content.view)
        parts = tuple(
            cold_run(
                r.index,
                positions[r.start : r.end],
                dead[r.start : r.end],
                r.sample,
                r.sample_vectors,
                r.start,
            )
            for r in runs
        )
        return parts, runs[-1].end if runs else 0

    def wait_for_builds(self, timeout: float | None = None) -> bool:
        """Whether the runs' builds in flight finished (the next view serves them): for tests."""
        return all(runs.wait(timeout) for runs in (self._similar_runs, self._cold_runs, self._known_runs))

    def wait_for_sealing(self, timeout: float) -> bool:
        """Whether, within ``timeout`` seconds in all, the builds that leave rows searched exactly
        until they finish did: the main cold rows' index and the newest delta rows' runs."""
        deadline = time.monotonic() + timeout
        cold = self.main.cold.index
        waits = [] if cold is None else [cold.wait]
        waits += [runs.wait_for_tail for runs in (self._similar_runs, self._cold_runs, self._known_runs)]
        return all([wait(max(0.0, deadline - time.monotonic())) for wait in waits])


def _counts_of(view: DeltaView) -> tuple[int, int, int, int, int, int]:
    """(live rows, rows, live known rows, known rows, live cold rows, cold rows) of ``view``."""
    return (
        view.live_rows, view.arrays.count, view.known_live, view.known.size, view.cold_live, view.cold.size,
    )  # fmt: skip


def _grown(mask: np.ndarray | None, n: int) -> np.ndarray:
    """``mask`` extended with False to ``n`` entries (a copy: the old one belongs to a served state)."""
    grown = np.zeros(n, bool)
    if mask is not None:
        grown[: len(mask)] = mask
    return grown


class StatePositions(Mapping[str, int]):
    """Item id -> position in one state: the newest delta row the state holds, else the main row."""

    def __init__(self, view: DeltaView) -> None:
        self._view = view
        self._main = view.log.main
        self._n_main = view.log.main.arrays.count

    def __getitem__(self, item_id: str) -> int:
        row = self._view.ids.row_of(item_id)
        if row >= 0:
            return self._n_main + row
        if row == REMOVED:
            raise KeyError(item_id)
        return self._main.positions[item_id]

    def positions_of(self, ids: Sequence[str]) -> np.ndarray:
        """Position of each of ``ids``, -1 where absent: one search per run for all of them. An id
        ending in NUL is absent: numpy strings drop trailing NULs, so no served id ends in one, and
        as an array element it would match the id without them."""
        if not ids:
            return np.zeros(0, np.int64)
        wanted = np.array(ids, dtype=str)
        rows = self._view.ids.rows_of(wanted)
        in_main = np.where(rows == REMOVED, -1, self._main.positions.positions_of(wanted))
        found = np.where(rows >= 0, self._n_main + rows, in_main)
        return np.where([i.endswith("\0") for i in ids], -1, found)

    def __iter__(self) -> Iterator[str]:
        main = self._main.arrays.ids[self._view.main_live]
        delta = self._view.arrays.ids[~self._view.superseded]
        return iter(np.concatenate([main, delta]).tolist())

    def __len__(self) -> int:
        return self._view.main_live_rows + self._view.live_rows
