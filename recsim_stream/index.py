"""FAISS indexes for serving: exact or approximate build, the recall gate, and the delta merge.

Every index here scores by inner product. Two tables are served per snapshot (see query.py):
"similar" indexes L2-normalised *input* vectors, so inner product is cosine; "recommend" indexes raw
*output* (context) vectors, scored against a session's mean input vector, the skip-gram objective's
own score, which measured about 2x the next-item HR@10 of input-input cosine.

Catalogues below ``exact_below`` rows get an exact flat index. Larger ones get HNSW or IVF, and an
approximate index is published only if its recall@20 against exact search on a sample of catalogue
queries reaches ``recall_gate``. Rows changed since the last full build are searched exactly
(``ExactRows``), or, once many, through IVF runs the query API builds over them (``ApproximateRows``);
a query searches main and delta, drops main-index hits for rows the delta overrides, and merges.

The two main indexes of a full snapshot are built and gated once, by the snapshotter, and shipped in
the snapshot folder as ``faiss.serialize_index`` bytes (``ShippedIndex``), so each query API replica
only deserialises them: rebuilding HNSW per replica took longer than the snapshot interval at 100k
items. A swap builds no index: the API's own IVF builds (cold content rows, sealed delta rows) run
on background threads. This is the only module that imports FAISS.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import faiss
import numpy as np

from recsim_stream.config import IndexConfig
from recsim_stream.scoring import with_prior
from recsim_stream.snapshot import ShippedIndex

RECALL_K = 20
KIND_FLAT = "flat"
KIND_HNSW = "hnsw"
KIND_IVF = "ivf"
SIMILAR = "similar"
RECOMMEND = "recommend"
SPARSE_LIVE = 0.2  # below this share of live rows, a main index's live rows are searched exactly
# How far a main index's search through its live rows may widen when it finds fewer than k. A graph
# search walks the region near the query; where every row there has died (superseded by the delta:
# often a run of near-duplicates re-encoded together), widening further finds nothing. In a kept
# 1M-item chain, 3.4% of /similar queries widened to all 846k live rows (17 searches, 75 ms), two
# thirds still finding none; capped here, recall@20 of the answers was the same (0.947 against exact
# search, 1,500 queries): the delta answers with those rows' new versions. /similar p99 76 -> 3.5 ms.
WIDEST_MAIN_FETCH = 1024
# A returned row counts as one of the true top-k when its exact score is within this of the k-th best
# (ann-benchmarks' recall): near-duplicate rows (items whose metadata differ only in price, served
# from content) tie, and which of 27 equally good rows an index returns is no error. Counting ids
# alone, a 171k-row simulator catalogue measured recall@20 0.80 against 0.94 with ties, and the
# gate refused every full snapshot of the 1M end-to-end benchmark after its first.
TIE_TOLERANCE = 1e-3
GATE_WIDENINGS = 2  # times the recall gate may double an index's search breadth before refusing it
_KINDS = ((faiss.IndexHNSWFlat, KIND_HNSW), (faiss.IndexIVFFlat, KIND_IVF), (faiss.IndexFlat, KIND_FLAT))

# FAISS's Python interrupt check takes the GIL from inside its OpenMP loops. An index build on a
# background thread while the interpreter exits then ends in std::terminate (seen at the updater's
# shutdown, mid-HNSW build). Signals reach only the main thread, which runs no long FAISS call here,
# so the check serves nothing: turn it off for the process.
faiss.InterruptCallback.clear_instance()


class RecallGateError(Exception):
    """An approximate index fell below the recall gate; it must not be served."""

    def __init__(self, kind: str, recall: float, gate: float, rows: int) -> None:
        super().__init__(
            f"{kind} index over {rows} rows: expected recall@{RECALL_K} >= {gate:.3f}, measured {recall:.3f}"
        )
        self.kind = kind
        self.recall = recall
        self.gate = gate


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as contiguous float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True)
class VectorIndex:
    """A FAISS inner-product index whose results are positions 0..size-1 of the indexed rows."""

    kind: str
    index: faiss.Index
    size: int
    build_seconds: float
    pad: int = 0  # zero coordinates appended to each query: the norm-equalising one (see build_index)

    def search(
        self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of shape (len(queries), k); missing slots have position -1. ``params``
        may restrict the search to selected rows."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d - self.pad)
        if self.pad:
            queries = np.hstack([queries, np.zeros((len(queries), self.pad), np.float32)])
        if self.size == 0 or k <= 0:
            shape = (queries.shape[0], max(k, 0))
            return np.full(shape, -np.inf, dtype=np.float32), np.full(shape, -1, dtype=np.int64)
        return self.index.search(queries, min(k, self.size), params=params)


def build_index(
    vectors: np.ndarray, config: IndexConfig, kind: str | None = None, equal_norms: bool = False
) -> VectorIndex:
    """Index ``vectors`` as given (normalise first for cosine). ``kind`` overrides the size rule.

    ``equal_norms``: for inner product over rows of unequal norms (maximum inner product search), an
    approximate index gets each row with one more coordinate, ``sqrt(max_norm^2 - norm^2)``, and
    queries get a zero there: scores are unchanged and every row has the same norm, which graph and
    cell searches need. Without it, HNSW's recall@20 on output vectors plus the popularity prior was
    0.55 at 60k rows and 0.06 at 235k (the updater's recall gate refused them).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    kind = kind or (KIND_FLAT if n < config.exact_below else config.kind)
    pad = int(equal_norms and kind != KIND_FLAT)
    if pad:
        vectors = _equal_norms(vectors)
    dim = vectors.shape[1]
    started = time.perf_counter()
    if kind == KIND_FLAT:
        index = faiss.IndexFlatIP(dim)
    elif kind == KIND_HNSW:
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = config.hnsw_ef_search
    elif kind == KIND_IVF:
        nlist = config.ivf_nlist or max(1, round(4 * math.sqrt(n)))
        nlist = min(nlist, max(1, n))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means needs ~40 points per cell; more only slows training.
        rng = np.random.default_rng(config.seed)
        sample = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)] if n else vectors
        index.train(sample)
        index.nprobe = min(config.ivf_nprobe, nlist)
        index.make_direct_map()  # rows can be reconstructed (MergedIndex's sparse case)
    else:
        raise ValueError(f"index kind: expected flat, hnsw or ivf, got {kind!r}")
    if n:
        index.add(vectors)
    return VectorIndex(kind, index, n, time.perf_counter() - started, pad)


def _equal_norms(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with one more coordinate, ``sqrt(max_norm^2 - norm^2)``: every row as long as the
    longest, inner products with a query padded by 0 unchanged (see build_index)."""
    if not len(vectors):
        return np.zeros((0, vectors.shape[1] + 1), np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    extra = np.sqrt(np.maximum(norms.max() ** 2 - norms**2, 0.0))[:, None]
    return np.ascontiguousarray(np.hstack([vectors, extra]), dtype=np.float32)


def measure_recall(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> float:
    """Mean fraction of the top-k that ``index`` returns that are among the exact top-k (over
    ``vectors``), ties at the k-th score included (``TIE_TOLERANCE``)."""
    k = min(k, len(vectors))
    if k == 0 or len(queries) == 0:
        return 1.0
    return _recall(index, vectors, queries, _kth_scores(vectors, queries, k), k)


def _kth_scores(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Each query's k-th best exact inner product over ``vectors``."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)[0][:, -1]


def _recall(
    index: VectorIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    kth: np.ndarray,
    k: int,
    params: faiss.SearchParameters | None = None,
) -> float:
    _, found = index.search(queries, k, params)
    scores = np.einsum("qd,qkd->qk", queries, vectors[np.maximum(found, 0)], dtype=np.float64)
    hits = (found >= 0) & (scores >= kth[:, None] - TIE_TOLERANCE)
    return float(hits.sum()) / found.size


def gate_recall(
    index: VectorIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    config: IndexConfig,
    served: np.ndarray | None = None,
) -> float:
    """Measured recall@20 of ``index`` on a seeded sample of ``queries``; raises below the gate.

    ``served`` (a mask of rows) measures the search the API makes when only those rows may be
    returned: through a selector, against the exact top-k of those rows; and, when they are fewer
    than ``SPARSE_LIVE`` of the index, not at all, since the API then searches them exactly. Rows a
    search never returns (cold rows, where new items have their own component) must not decide
    whether an index is served: over content-only rows, the next-item scores of a query spread
    over 0.003 in the top 200, and no approximate search tells them apart.

    Below the gate, the search breadth (HNSW efSearch, IVF nprobe) is doubled, up to
    ``GATE_WIDENINGS`` times, and measured again: a wider search costs query time, a refused index
    costs freshness. The breadth that passed stays set on the index (and travels with it when
    shipped). An exact index is exact by construction and is not measured.
    """
    rows = np.arange(index.size) if served is None else np.flatnonzero(served)
    if index.kind == KIND_FLAT or len(rows) == 0 or len(queries) == 0 or len(rows) < SPARSE_LIVE * index.size:
        return 1.0
    rng = np.random.default_rng(config.seed)
    sample = queries[
        np.sort(rng.choice(len(queries), size=min(len(queries), config.recall_sample), replace=False))
    ]
    k = min(RECALL_K, len(rows))
    kth = _kth_scores(vectors[rows], sample, k)
    bitmap = None if served is None else np.packbits(served, bitorder="little")

    def measure() -> float:  # search parameters copy the breadth: make them after each widening
        selector = None if bitmap is None else faiss.IDSelectorBitmap(index.size, faiss.swig_ptr(bitmap))
        params = None if selector is None else _selecting(index, selector)
        return _recall(index, vectors, sample, kth, k, params)

    recall = measure()
    for _ in range(GATE_WIDENINGS):
        if recall >= config.recall_gate:
            break
        _widen(index)
        recall = measure()
    if recall < config.recall_gate:
        raise RecallGateError(index.kind, recall, config.recall_gate, index.size)
    return recall


def _widen(index: VectorIndex) -> None:
    if index.kind == KIND_HNSW:
        index.index.hnsw.efSearch *= 2
    else:
        index.index.nprobe = min(2 * index.index.nprobe, index.index.nlist)


@dataclass(frozen=True)
class ExactRows:
    """Rows searched by brute force through FAISS's single-threaded kernel: the rows changed since
    the last full build, or the few live rows of a main index. ``vectors`` may be a prefix view of an
    append-only buffer (delta_log.py): the rows it covers are never rewritten, so a state
    keeps searching the same rows while later ones are appended. ``dead`` rows are skipped, through
    a FAISS ID selector in ``search`` (one pass keeping a heap of the best, in C++ without the GIL:
    1.4-4x faster than scores, a mask and ``np.argpartition`` over 120k rows on the busy machine)."""

    vectors: np.ndarray  # (n, d) float32, C-contiguous
    positions: np.ndarray | None  # (n,) state position of each row; None: ``offset + row``
    dead: np.ndarray | None = None  # (n,) bool; None: every row may be returned
    offset: int = 0
    selector: faiss.IDSelector | None = field(init=False, default=None)
    bitmap: np.ndarray | None = field(init=False, default=None)  # the bits ``selector`` points to

    def __post_init__(self) -> None:
        if self.dead is not None and self.dead.any():
            bitmap = np.packbits(~self.dead, bitorder="little")
            object.__setattr__(self, "bitmap", bitmap)
            object.__setattr__(
                self, "selector", faiss.IDSelectorBitmap(len(self.dead), faiss.swig_ptr(bitmap))
            )

    @property
    def size(self) -> int:
        return len(self.vectors)

    def position_of(self, rows: np.ndarray) -> np.ndarray:
        return self.offset + rows if self.positions is None else self.positions[rows]

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Every row's inner product with ``query`` (its first ``d`` coordinates); -inf for dead rows."""
        scores = inner_products(self.vectors, np.ascontiguousarray(query[: self.vectors.shape[1]]))
        if self.dead is not None:
            scores[self.dead] = -np.inf
        return scores

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, positions), best first, skipping dead rows and ``exclude`` positions."""
        fetch = min(k + len(exclude), self.size)
        if fetch <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        n, d = self.vectors.shape
        query = np.ascontiguousarray(query[:d], dtype=np.float32)
        scores, rows = np.empty(fetch, np.float32), np.empty(fetch, np.int64)
        faiss.knn_inner_product(
            faiss.swig_ptr(query),
            faiss.swig_ptr(self.vectors),
            d,
            1,
            n,
            fetch,
            faiss.swig_ptr(scores),
            faiss.swig_ptr(rows),
            self.selector,
        )
        found = rows >= 0
        positions = self.position_of(rows[found])
        keep = ~np.isin(positions, exclude)
        return scores[found][keep][:k], positions[keep][:k]


@dataclass(frozen=True)
class ApproximateRows:
    """A run of rows of an append-only table searched through an approximate index built over them
    (delta_log.py's segments); ``dead`` rows (superseded since the build) are skipped through a
    FAISS ID selector, so they cost no extra fetches."""

    index: VectorIndex
    positions: np.ndarray | None  # (index.size,) state position of each row; None: ``offset + row``
    live: int
    params: faiss.SearchParameters | None  # selects the live rows (None: all are live)
    bitmap: np.ndarray  # the bits ``params`` points to: kept alive with it
    offset: int = 0

    @property
    def size(self) -> int:
        return self.index.size

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, positions), best first, skipping dead rows and ``exclude`` positions."""
        if not self.live or k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores, rows = self.index.search(query, min(k + len(exclude), self.live), self.params)
        found = rows[0] >= 0
        rows = rows[0][found]
        positions = self.offset + rows if self.positions is None else self.positions[rows]
        keep = ~np.isin(positions, exclude)
        return scores[0][found][keep][:k], positions[keep][:k]


def approximate_rows(
    index: VectorIndex, positions: np.ndarray | None, dead: np.ndarray, offset: int = 0
) -> ApproximateRows:
    """``index`` (over the rows ``positions`` name, or ``offset`` on) searched without its ``dead`` rows."""
    live = ~dead
    bitmap = np.packbits(live, bitorder="little")
    n_live = int(live.sum())
    params = None
    if n_live < index.size:
        params = _selecting(index, faiss.IDSelectorBitmap(index.size, faiss.swig_ptr(bitmap)))
    return ApproximateRows(index, positions, n_live, params, bitmap, offset)


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest ``scores``, best first (ties by index)."""
    if k < len(scores):
        head = np.argpartition(-scores, k - 1)[:k]
    else:
        head = np.arange(len(scores))
    return head[np.lexsort((head, -scores[head]))]


@dataclass(frozen=True)
class MergedIndex:
    """A main index over the last full build plus the rows changed since (``delta`` parts: exact,
    or sealed runs with an approximate index of their own).

    Positions ``0..main.size-1`` are main rows; delta parts name their own positions. ``live[p]``
    says whether main row ``p`` may be returned: a main row whose id the delta overrides is not, so
    its stale vector never is; nor is a row a table leaves out (cold rows in discovery). The main
    index is searched through a FAISS ID selector over its live rows, so dead rows cost no extra
    fetches. A graph search through a sparse selection finds only the live rows near where it
    walks, so when fewer than ``SPARSE_LIVE`` of an approximate main index's rows are live, they are
    searched exactly instead (``main_exact``: built once per base and shared by the states after it,
    whose ``live`` only shrinks, so it may hold rows that died since: they are masked per state).
    """

    main: VectorIndex
    live: np.ndarray  # (main.size,) bool
    main_live: int  # live rows of the main index
    main_params: faiss.SearchParameters | None  # selects the live main rows (None: all are live)
    main_bitmap: np.ndarray  # the bits ``main_params`` points to: kept alive with it
    main_exact: ExactRows | None  # the sparse live main rows, searched exactly
    delta: tuple[ExactRows | ApproximateRows, ...]

    def search(
        self, query: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, positions) for one query vector, best first, skipping ``exclude`` positions.

        Runs FAISS single-threaded in the calling thread (OpenMP settings are per thread): one query
        split over two OpenMP threads took 36-56 ms p50 on this busy 2-core machine against 1.2 ms on
        one (flat, 100k x 64); requests get their parallelism from the server's threadpool instead.
        """
        faiss.omp_set_num_threads(1)
        exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude, np.int64)
        query = np.ascontiguousarray(query, dtype=np.float32)
        if self.main_exact is not None:
            found = [self.main_exact.search(query, k, exclude)]
        else:
            found = [self._search_main(query, k, exclude)]
        found += [part.search(query, k, exclude) for part in self.delta]
        scores = np.concatenate([s for s, _ in found])
        positions = np.concatenate([p for _, p in found])
        order = np.argsort(-scores, kind="stable")[:k]
        return scores[order], positions[order]

    def _search_main(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Every hit is live; ask for the excluded ones on top, and widen in case the selection left
        # the graph search short, up to WIDEST_MAIN_FETCH (see there).
        fetch = min(k + len(exclude), self.main_live)
        widest = min(max(fetch, WIDEST_MAIN_FETCH), self.main_live)
        while True:
            scores, positions = self.main.search(query, fetch, self.main_params)
            scores, positions = scores[0], positions[0]
            valid = (positions >= 0) & ~np.isin(positions, exclude)
            if int(valid.sum()) >= k or fetch >= widest:
                return scores[valid], positions[valid]
            fetch = min(fetch * 2, widest)


def merge_parts(
    main: VectorIndex,
    live: np.ndarray,
    delta: tuple[ExactRows | ApproximateRows, ...],
    previous: MergedIndex | None = None,
) -> MergedIndex:
    """``main`` restricted to its ``live`` rows, with the exact ``delta`` parts. ``previous``: a
    merged index of an earlier state on the same main whose live rows include these, whose exact
    copy of sparse live rows is reused rather than gathered again (O(main) per swap otherwise)."""
    main_live = int(live.sum())
    bitmap = np.packbits(live, bitorder="little")
    params = (
        None
        if main_live == main.size
        else _selecting(main, faiss.IDSelectorBitmap(main.size, faiss.swig_ptr(bitmap)))
    )
    exact = None
    if main.kind != KIND_FLAT and main_live < SPARSE_LIVE * main.size:
        if previous is not None and previous.main is main and previous.main_exact is not None:
            rows, vectors = previous.main_exact.positions, previous.main_exact.vectors
        else:
            rows = np.flatnonzero(live)
            vectors = np.ascontiguousarray(main.index.reconstruct_batch(rows)[:, : main.index.d - main.pad])
        exact = ExactRows(vectors, rows, dead=~live[rows])
    return MergedIndex(main, live, main_live, params, bitmap, exact, delta)


def build_ivf(vectors: np.ndarray, config: IndexConfig, nprobe: int) -> VectorIndex:
    """IVF by inner product over ``vectors``, quick to build for the query API's own indexes
    (cold content rows, sealed delta rows): about sqrt(n) cells (``cold_nlist`` overrides), 40
    training points a cell and 10 k-means iterations (FAISS's 25 cost 2.5x the time for no recall
    measured). 100k x 128 took 0.4 s, 300k 1.5 s on one thread; HNSW at 1M took ~100 s.

    Rows are stored as float16: a query's cost is reading its cells, and with the other core
    training the misses of those scattered reads in the shared cache are what slows it
    (scripts/replay_http.py --stream-cpu; BENCHMARKS.md, ninth session). Over 900k
    clustered unit 128-d rows, nprobe 16, k 256: 0.39 -> 0.23 ms a query on an idle core, top-20
    agreement with float32 cells 0.998, the same build time (a scratch benchmark)."""
    faiss.omp_set_num_threads(config.build_threads)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, width = vectors.shape
    nlist = min(config.cold_nlist or max(1, round(math.sqrt(n))), max(1, n))
    started = time.perf_counter()
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(width),
        width,
        nlist,
        faiss.ScalarQuantizer.QT_fp16,
        faiss.METRIC_INNER_PRODUCT,
        False,
    )
    index.cp.niter = 10
    rng = np.random.default_rng(config.seed)
    index.train(vectors[np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))])
    index.add(vectors)
    index.nprobe = min(nprobe, nlist)
    return VectorIndex(KIND_IVF, index, n, time.perf_counter() - started)


def build_cold_index(content: np.ndarray, config: IndexConfig) -> VectorIndex:
    """IVF over unit content vectors of cold rows, for the new-item component's top candidates: its
    recall@20 on clustered content vectors was 0.99+ at ``cold_nprobe`` 16-32 of sqrt(n) cells."""
    return build_ivf(content, config, config.cold_nprobe)


def build_gated_ivf(vectors: np.ndarray, config: IndexConfig) -> VectorIndex | None:
    """IVF over rows searched by cosine (unit input vectors of delta rows), passed through the
    recall gate (widening ``ivf_nprobe`` as ``gate_recall`` does); None if it stays below it, and
    those rows are then searched exactly."""
    index = build_ivf(vectors, config, config.ivf_nprobe)
    try:
        gate_recall(index, vectors, vectors, config)
    except RecallGateError:
        return None
    return index


def build_gated_mips_ivf(vectors: np.ndarray, queries: np.ndarray, config: IndexConfig) -> VectorIndex | None:
    """IVF over rows searched by maximum inner product (learned delta rows: output vectors with the
    popularity prior), laid out with equal norms (see build_index), passed through the recall gate on
    ``queries`` (each row's own input vector with the prior's weight, as a session asks); None if it
    stays below it, and those rows are then searched exactly."""
    index = replace(build_ivf(_equal_norms(vectors), config, config.ivf_nprobe), pad=1)
    try:
        gate_recall(index, vectors, queries, config)
    except RecallGateError:
        return None
    return index


def _selecting(index: VectorIndex, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters that keep ``index``'s own settings (they would reset to FAISS defaults)."""
    if index.kind == KIND_HNSW:
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.index.hnsw.efSearch)
    if index.kind == KIND_IVF:
        return faiss.SearchParametersIVF(sel=selector, nprobe=index.index.nprobe)
    return faiss.SearchParameters(sel=selector)


def search_single_threaded() -> None:
    """Searches from the calling thread use one OpenMP thread (the setting is per thread): see
    ``MergedIndex.search``."""
    faiss.omp_set_num_threads(1)


def inner_products(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``rows @ query`` as float32 through FAISS's single-threaded SIMD kernel: numpy's BLAS spread one
    matrix-vector product over its threads and took 3x as long on this busy 2-core machine."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    query = np.ascontiguousarray(query, dtype=np.float32)
    if rows.ndim != 2 or query.shape != (rows.shape[1],):
        raise ValueError(
            f"inner_products: expected (n, d) rows and a (d,) query, got {rows.shape} and {query.shape}"
        )
    out = np.empty(len(rows), dtype=np.float32)
    if len(rows):
        faiss.fvec_inner_products_ny(
            faiss.swig_ptr(out), faiss.swig_ptr(query), faiss.swig_ptr(rows), rows.shape[1], len(rows)
        )
    return out


class IndexLoadError(Exception):
    """A shipped index does not describe the rows it ships with (or is not a FAISS index at all)."""


@dataclass(frozen=True)
class MainIndexes:
    """The two indexes over a full snapshot's rows: ``similar`` over unit input vectors, ``recommend``
    over output vectors with the popularity prior (at ``popularity_power``, which delta rows must share)."""

    similar: VectorIndex
    recommend: VectorIndex
    recall: Mapping[str, float]  # measured by the gate, per index
    popularity_power: float

    @property
    def kind(self) -> str:
        return self.similar.kind


def main_index_vectors(
    inputs: np.ndarray, outputs: np.ndarray, counts: np.ndarray, power: float
) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the similar index, rows of the recommend index) for a table of items."""
    return l2_normalise(inputs), with_prior(outputs, counts, power)


def build_main_indexes(
    inputs: np.ndarray,
    outputs: np.ndarray,
    counts: np.ndarray,
    config: IndexConfig,
    discovery: np.ndarray | None = None,
) -> MainIndexes:
    """Build and gate both indexes with ``config.build_threads`` FAISS threads (slow at 100k+ rows:
    call it off the serving path). Raises ``RecallGateError`` if either falls below the gate.
    ``discovery`` marks the rows next-item search may return (None: all), which its gate measures.

    ``recommend`` is a maximum inner product search, where neither layout wins everywhere: with
    equal norms (see build_index) it measured recall@20 0.90 and 0.93 on served snapshots of 60k and
    457k rows where plain inner product got 0.55 and 0.06, yet on rows whose norms differ by orders
    of magnitude the plain one does better. The equal-norm layout is tried first, then the plain one.
    """
    faiss.omp_set_num_threads(config.build_threads)  # OpenMP settings are per calling thread
    unit_inputs, prior_outputs = main_index_vectors(inputs, outputs, counts, config.popularity_power)
    similar = build_index(unit_inputs, config)
    recall = {SIMILAR: gate_recall(similar, unit_inputs, unit_inputs, config)}
    queries = np.hstack([inputs, np.ones((len(inputs), 1), np.float32)])
    recommend = build_index(prior_outputs, config, equal_norms=True)
    try:
        recall[RECOMMEND] = gate_recall(recommend, prior_outputs, queries, config, discovery)
    except RecallGateError:
        if recommend.kind == KIND_FLAT:
            raise
        recommend = build_index(prior_outputs, config)
        recall[RECOMMEND] = gate_recall(recommend, prior_outputs, queries, config, discovery)
    return MainIndexes(similar, recommend, recall, config.popularity_power)


def exact_main_indexes(
    inputs: np.ndarray, outputs: np.ndarray, counts: np.ndarray, config: IndexConfig
) -> MainIndexes:
    """Both tables indexed exactly: instant to build, slow to search at a large catalogue; served
    until the first approximate build of a catalogue is ready."""
    unit_inputs, prior_outputs = main_index_vectors(inputs, outputs, counts, config.popularity_power)
    similar = build_index(unit_inputs, config, kind=KIND_FLAT)
    recommend = build_index(prior_outputs, config, kind=KIND_FLAT)
    return MainIndexes(similar, recommend, {SIMILAR: 1.0, RECOMMEND: 1.0}, config.popularity_power)


def ship(main: MainIndexes) -> ShippedIndex:
    """``main`` as bytes and a JSON description, to travel in a snapshot folder (no pickle)."""
    return ShippedIndex(
        files={name: faiss.serialize_index(index.index) for name, index in _named(main).items()},
        info={
            "kind": main.kind,
            "rows": main.similar.size,
            "recall": dict(main.recall),
            "build_seconds": {name: index.build_seconds for name, index in _named(main).items()},
            "pad": {name: index.pad for name, index in _named(main).items()},
            "popularity_power": main.popularity_power,
        },
    )


def unship(shipped: ShippedIndex, rows: int, dim: int) -> MainIndexes:
    """The indexes of ``shipped``, checked against the ``rows`` x ``dim`` table they must index.

    The bytes were verified against the manifest's checksum before this; FAISS parses them in C++,
    so only a snapshot folder this system wrote should be loaded (as for any snapshot).
    """
    info = shipped.info
    try:
        kind, recall = str(info["kind"]), {str(k): float(v) for k, v in dict(info["recall"]).items()}
        seconds = {str(k): float(v) for k, v in dict(info["build_seconds"]).items()}
        pads = {str(k): int(v) for k, v in dict(info["pad"]).items()}
        power = float(info["popularity_power"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexLoadError(f"shipped index: malformed description {dict(info)!r:.200} ({exc})") from exc
    if not all(math.isfinite(x) for x in (*recall.values(), *seconds.values(), power)):
        raise IndexLoadError(f"shipped index: expected finite figures, got {dict(info)!r:.200}")
    if set(shipped.files) != {SIMILAR, RECOMMEND} or set(recall) != {SIMILAR, RECOMMEND}:
        raise IndexLoadError(
            f"shipped index: expected files and recall for {SIMILAR} and {RECOMMEND}, "
            f"got files {sorted(shipped.files)} and recall {sorted(recall)}"
        )
    loaded = {}
    for name, expected_dim in ((SIMILAR, dim), (RECOMMEND, dim + 1)):
        try:
            index = faiss.deserialize_index(np.ascontiguousarray(shipped.files[name], dtype=np.uint8))
        except (RuntimeError, MemoryError) as exc:  # a damaged header can ask FAISS for any allocation
            raise IndexLoadError(f"shipped index {name}: not a FAISS index ({str(exc)[:200]})") from exc
        found = next((k for cls, k in _KINDS if isinstance(index, cls)), type(index).__name__)
        metric = "inner product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "another metric"
        pad = pads.get(name, 0)
        if (found, index.d, index.ntotal, metric) != (kind, expected_dim + pad, rows, "inner product"):
            raise IndexLoadError(
                f"shipped index {name}: expected {kind} by inner product over {rows} x {expected_dim + pad}, "
                f"got {found} by {metric} over {index.ntotal} x {index.d}"
            )
        loaded[name] = VectorIndex(kind, index, rows, seconds.get(name, 0.0), pad)
    return MainIndexes(loaded[SIMILAR], loaded[RECOMMEND], recall, power)


def _named(main: MainIndexes) -> dict[str, VectorIndex]:
    return {SIMILAR: main.similar, RECOMMEND: main.recommend}
