"""FAISS indexes for serving: exact or approximate build, the recall gate, and the delta merge.

Every index here scores by inner product. Two tables are served per snapshot (see query.py):
"similar" indexes L2-normalised *input* vectors, so inner product is cosine; "recommend" indexes raw
*output* (context) vectors, scored against a session's mean input vector, the skip-gram objective's
own score, which measured about 2x the next-item HR@10 of input-input cosine.

Catalogues below ``exact_below`` rows get an exact flat index. Larger ones get HNSW or IVF, and an
approximate index is published only if its recall@20 against exact search on a sample of catalogue
queries reaches ``recall_gate``. Rows changed since the last full build live in a small exact
*delta* index; a query searches both, drops main-index hits for rows the delta overrides, and merges.
This is the only module that imports FAISS.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from recsim_stream.config import IndexConfig

RECALL_K = 20
KIND_FLAT = "flat"
KIND_HNSW = "hnsw"
KIND_IVF = "ivf"


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

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of shape (len(queries), k); missing slots have position -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d)
        if self.size == 0 or k <= 0:
            shape = (queries.shape[0], max(k, 0))
            return np.full(shape, -np.inf, dtype=np.float32), np.full(shape, -1, dtype=np.int64)
        return self.index.search(queries, min(k, self.size))


def build_index(vectors: np.ndarray, config: IndexConfig, kind: str | None = None) -> VectorIndex:
    """Index ``vectors`` as given (normalise first for cosine). ``kind`` overrides the size rule."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    kind = kind or (KIND_FLAT if n < config.exact_below else config.kind)
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
    else:
        raise ValueError(f"index kind: expected flat, hnsw or ivf, got {kind!r}")
    if n:
        index.add(vectors)
    return VectorIndex(kind, index, n, time.perf_counter() - started)


def measure_recall(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> float:
    """Mean fraction of the exact top-k (over ``vectors``) that ``index`` also returns."""
    k = min(k, len(vectors))
    if k == 0 or len(queries) == 0:
        return 1.0
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, found = index.search(queries, k)
    hits = sum(len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True))
    return hits / (k * len(queries))


def gate_recall(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, config: IndexConfig) -> float:
    """Measured recall@20 of ``index`` on a seeded sample of ``queries``; raises below the gate.

    An exact index is exact by construction and is not measured.
    """
    if index.kind == KIND_FLAT:
        return 1.0
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(len(queries), size=min(len(queries), config.recall_sample), replace=False)
    recall = measure_recall(index, vectors, queries[np.sort(sample)])
    if recall < config.recall_gate:
        raise RecallGateError(index.kind, recall, config.recall_gate, index.size)
    return recall


@dataclass(frozen=True)
class MergedIndex:
    """A main index over the last full build plus an exact index over the rows changed since.

    Positions ``0..main.size-1`` are main rows, ``main.size..`` are delta rows. ``live[p]`` is False
    for a main row whose id the delta overrides, so its stale vector is never returned.
    """

    main: VectorIndex
    delta: VectorIndex
    live: np.ndarray  # (main.size + delta.size,) bool
    margin: int

    def search(
        self, query: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, positions) for one query vector, best first, skipping ``exclude`` positions.

        Runs FAISS single-threaded in the calling thread (OpenMP settings are per thread): one query
        split over two OpenMP threads took 36-56 ms p50 on this busy 2-core machine against 1.2 ms on
        one (flat, 100k x 64); requests get their parallelism from the server's threadpool instead.
        """
        faiss.omp_set_num_threads(1)
        allowed = self.live
        if exclude is not None and len(exclude):
            allowed = allowed.copy()
            allowed[exclude] = False
        dead = self.main.size - int(allowed[: self.main.size].sum())
        scores, positions = self._search_main(query, k, dead, allowed)
        d_scores, d_pos = self.delta.search(query, k + (0 if exclude is None else len(exclude)))
        d_pos = np.where(d_pos[0] >= 0, d_pos[0] + self.main.size, -1)
        keep = d_pos >= 0
        keep[keep] = allowed[d_pos[keep]]
        scores = np.concatenate([scores, d_scores[0][keep]])
        positions = np.concatenate([positions, d_pos[keep]])
        order = np.argsort(-scores, kind="stable")[:k]
        return scores[order], positions[order]

    def _search_main(
        self, query: np.ndarray, k: int, dead: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # Ask for more than k so the filtered hits still fill k; widen if they did not.
        fetch = k + min(dead, self.margin)
        while True:
            scores, positions = self.main.search(query, fetch)
            scores, positions = scores[0], positions[0]
            valid = positions >= 0
            valid[valid] = allowed[positions[valid]]
            exhausted = fetch >= self.main.size or int((positions >= 0).sum()) < fetch
            if int(valid.sum()) >= k or exhausted or fetch >= k + dead:
                return scores[valid], positions[valid]
            fetch = min(fetch * 2, k + dead, self.main.size)


def merge_with_delta(
    main: VectorIndex, main_live: np.ndarray, delta_vectors: np.ndarray, margin: int
) -> MergedIndex:
    """Pair ``main`` with an exact index over ``delta_vectors``; ``main_live`` marks unoverridden main rows."""
    delta = build_index(delta_vectors, IndexConfig(), kind=KIND_FLAT)
    live = np.concatenate([main_live, np.ones(delta.size, dtype=bool)])
    return MergedIndex(main, delta, live, margin)
