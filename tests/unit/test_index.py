import faiss
import numpy as np
import pytest

from recsim_stream.config import IndexConfig
from recsim_stream.index import (
    SIMILAR,
    ExactRows,
    IndexLoadError,
    RecallGateError,
    approximate_rows,
    build_index,
    build_ivf,
    build_main_indexes,
    gate_recall,
    l2_normalise,
    measure_recall,
    merge_parts,
    ship,
    unship,
)
from recsim_stream.snapshot import ShippedIndex


def _clustered(n=3000, dim=16, clusters=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + 0.2 * rng.normal(size=(n, dim))
    return l2_normalise(points)


CONFIG = IndexConfig(exact_below=1000, recall_sample=100, hnsw_ef_search=64)


def test_small_catalogues_get_an_exact_index():
    assert build_index(_clustered(n=500), CONFIG).kind == "flat"


def test_large_catalogues_get_the_configured_kind():
    assert build_index(_clustered(), CONFIG).kind == "hnsw"


def test_exact_index_returns_the_query_row_first():
    vectors = _clustered(n=500)
    scores, positions = build_index(vectors, CONFIG).search(vectors[7], 3)
    assert positions[0][0] == 7
    assert scores[0][0] == pytest.approx(1.0, abs=1e-5)


def test_search_on_an_empty_index_returns_no_positions():
    _, positions = build_index(np.zeros((0, 4), np.float32), CONFIG).search(np.ones(4), 2)
    assert positions.tolist() == [[-1, -1]]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_recall_gate_passes_on_clustered_vectors(kind):
    vectors = _clustered()
    index = build_index(vectors, CONFIG, kind=kind)
    assert gate_recall(index, vectors, vectors, CONFIG) >= 0.9


def test_recall_gate_refuses_an_index_over_the_wrong_rows():
    vectors = _clustered()
    shuffled = vectors[np.random.default_rng(1).permutation(len(vectors))]
    broken = build_index(shuffled, CONFIG, kind="hnsw")  # positions no longer match the catalogue
    with pytest.raises(RecallGateError) as refused:
        gate_recall(broken, vectors, vectors, CONFIG)
    assert refused.value.recall < 0.1
    assert refused.value.gate == 0.9


def test_recall_gate_refuses_a_starved_ivf_on_unclustered_vectors():
    vectors = l2_normalise(np.random.default_rng(2).normal(size=(3000, 32)))
    starved = IndexConfig(exact_below=1000, kind="ivf", ivf_nlist=200, ivf_nprobe=1, recall_sample=100)
    with pytest.raises(RecallGateError, match="expected recall@20 >= 0.900"):
        gate_recall(build_index(vectors, starved), vectors, vectors, starved)


def test_exact_index_has_recall_one():
    vectors = _clustered(n=500)
    assert measure_recall(build_index(vectors, CONFIG), vectors, vectors[:50]) == 1.0


def merge_with_delta(main, main_live, delta_vectors, delta_live=None):
    """``main`` and exact delta rows at positions ``main.size`` on."""
    dead = None if delta_live is None else ~delta_live
    delta = ExactRows(np.ascontiguousarray(delta_vectors, dtype=np.float32), None, dead, offset=main.size)
    return merge_parts(main, main_live, (delta,))


def _merged(main_vectors, delta_vectors, overridden, kind="flat"):
    main = build_index(main_vectors, CONFIG, kind=kind)
    live = np.ones(len(main_vectors), dtype=bool)
    live[overridden] = False
    return merge_with_delta(main, live, delta_vectors)


def test_delta_row_overrides_its_stale_copy_in_the_main_index():
    main_vectors = np.eye(4, dtype=np.float32)
    # Row 0 moved: its new vector sits on axis 1; position 4 is its delta copy.
    merged = _merged(main_vectors, np.array([[0, 1, 0, 0]], np.float32), overridden=[0])
    _, positions = merged.search(np.array([1, 0, 0, 0], np.float32), 5)
    assert 0 not in positions.tolist()
    assert sorted(positions.tolist()) == [1, 2, 3, 4]


def test_merge_ranks_delta_and_main_hits_together():
    main_vectors = np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32)
    merged = _merged(main_vectors, np.array([[0.8, 0.6]], np.float32), overridden=[])
    scores, positions = merged.search(np.array([1, 0], np.float32), 3)
    assert positions.tolist() == [0, 3, 1]
    assert scores.tolist() == pytest.approx([1.0, 0.8, 0.6])


def test_merge_fills_k_even_when_many_main_hits_are_overridden():
    vectors = _clustered(n=200)
    overridden = list(range(0, 200, 2))  # half the main rows
    merged = _merged(vectors, np.zeros((0, 16), np.float32), overridden=overridden)
    _, positions = merged.search(vectors[1], 20)
    assert len(positions) == 20
    assert all(p % 2 == 1 for p in positions.tolist())


def test_merge_skips_excluded_positions():
    merged = _merged(np.eye(3, dtype=np.float32), np.array([[1, 0, 0]], np.float32), overridden=[])
    _, positions = merged.search(np.array([1, 0, 0], np.float32), 2, exclude=np.array([0, 3]))
    assert len(positions) == 2
    assert {0, 3}.isdisjoint(positions.tolist())


def test_l2_normalise_keeps_zero_rows_zero():
    assert l2_normalise(np.array([[3, 4], [0, 0]])).tolist() == [
        [np.float32(0.6), np.float32(0.8)],
        [0.0, 0.0],
    ]


def _table(n=3000, dim=16):
    vectors = _clustered(n=n, dim=dim)
    return vectors, vectors[::-1].copy(), np.arange(n, dtype=np.int64)


def test_shipped_indexes_answer_as_the_built_ones():
    inputs, outputs, counts = _table()
    built = build_main_indexes(inputs, outputs, counts, CONFIG)
    loaded = unship(ship(built), rows=3000, dim=16)
    assert (
        loaded.similar.search(inputs[:5], 10)[1].tolist() == built.similar.search(inputs[:5], 10)[1].tolist()
    )
    assert (loaded.kind, loaded.recall, loaded.popularity_power) == ("hnsw", built.recall, 0.75)


def test_shipped_index_keeps_its_search_parameters():
    inputs, outputs, counts = _table()
    loaded = unship(ship(build_main_indexes(inputs, outputs, counts, CONFIG)), rows=3000, dim=16)
    assert loaded.similar.index.hnsw.efSearch == 64


def test_main_indexes_below_the_gate_are_refused():
    inputs = l2_normalise(np.random.default_rng(2).normal(size=(3000, 32)))
    starved = IndexConfig(exact_below=1000, kind="ivf", ivf_nlist=200, ivf_nprobe=1, recall_sample=100)
    with pytest.raises(RecallGateError):
        build_main_indexes(inputs, inputs, np.ones(3000, np.int64), starved)


def test_a_shipped_index_over_other_rows_is_refused():
    inputs, outputs, counts = _table()
    shipped = ship(build_main_indexes(inputs, outputs, counts, CONFIG))
    with pytest.raises(IndexLoadError, match="over 3001 x 16, got hnsw by inner product over 3000 x 16"):
        unship(shipped, rows=3001, dim=16)


def test_shipped_bytes_that_are_no_faiss_index_are_refused():
    inputs, outputs, counts = _table()
    shipped = ship(build_main_indexes(inputs, outputs, counts, CONFIG))
    garbage = {name: np.frombuffer(b"not an index" * 8, np.uint8) for name in shipped.files}
    with pytest.raises(IndexLoadError, match="not a FAISS index"):
        unship(ShippedIndex(garbage, shipped.info), rows=3000, dim=16)


def test_a_shipped_header_that_asks_faiss_for_an_impossible_allocation_is_refused():
    """FAISS reads a vector's length from the bytes and allocates it: std::bad_alloc (MemoryError),
    not RuntimeError, which the API's watcher would not catch, retrying the snapshot at every poll."""
    inputs, outputs, counts = _table()
    shipped = ship(build_main_indexes(inputs, outputs, counts, CONFIG))
    original = shipped.files[SIMILAR]
    for position in range(64):  # a length in the header: one of its high bytes set
        damaged = original.copy()
        damaged[position] = 195
        try:
            faiss.deserialize_index(damaged)
        except MemoryError:
            break
        except RuntimeError:
            continue
    else:
        pytest.fail("no header byte of the serialised index made FAISS fail to allocate")
    with pytest.raises(IndexLoadError, match="not a FAISS index"):
        unship(ShippedIndex({**shipped.files, SIMILAR: damaged}, shipped.info), rows=3000, dim=16)


def test_a_shipped_index_without_its_description_is_refused():
    inputs, outputs, counts = _table()
    shipped = ship(build_main_indexes(inputs, outputs, counts, CONFIG))
    with pytest.raises(IndexLoadError, match="malformed description"):
        unship(ShippedIndex(shipped.files, {"kind": "hnsw"}), rows=3000, dim=16)


def test_merge_fills_k_from_an_approximate_index_whose_rows_are_mostly_dead():
    vectors = _clustered()
    overridden = [p for p in range(3000) if p % 20]  # 95% of the main rows
    merged = _merged(vectors, np.zeros((0, 16), np.float32), overridden=overridden, kind="hnsw")
    _, positions = merged.search(vectors[0], 20)
    assert (len(positions), all(p % 20 == 0 for p in positions.tolist())) == (20, True)


def test_delta_rows_left_out_of_a_table_are_never_returned():
    main = build_index(np.eye(3, dtype=np.float32), CONFIG)
    delta = np.array([[1, 0, 0], [0.9, 0.1, 0]], np.float32)
    merged = merge_with_delta(main, np.ones(3, dtype=bool), delta, delta_live=np.array([False, True]))
    _, positions = merged.search(np.array([1, 0, 0], np.float32), 2)
    assert positions.tolist() == [0, 4]


def test_recall_gate_widens_the_search_until_it_passes():
    vectors = l2_normalise(np.random.default_rng(4).normal(size=(3000, 32)))
    narrow = IndexConfig(
        exact_below=100, kind="ivf", ivf_nlist=50, ivf_nprobe=4, recall_gate=0.8, recall_sample=200
    )
    index = build_index(vectors, narrow)
    assert gate_recall(index, vectors, vectors, narrow) >= 0.8
    assert index.index.nprobe == 16


def test_a_shipped_index_with_a_non_finite_figure_is_refused():
    inputs, outputs, counts = _table()
    shipped = ship(build_main_indexes(inputs, outputs, counts, CONFIG))
    with pytest.raises(IndexLoadError, match="expected finite figures"):
        unship(
            ShippedIndex(shipped.files, {**shipped.info, "popularity_power": float("nan")}), rows=3000, dim=16
        )


def test_equal_norms_keeps_inner_product_scores_and_pads_queries():
    rng = np.random.default_rng(5)
    vectors = _clustered() * rng.uniform(0.1, 5.0, size=(3000, 1)).astype(np.float32)
    index = build_index(vectors, CONFIG, equal_norms=True)
    scores, positions = index.search(vectors[:3], 1)
    exact = np.einsum("ij,ij->i", vectors[:3], vectors[positions[:, 0]])
    assert (index.pad, index.index.d) == (1, 17)
    assert scores[:, 0].tolist() == pytest.approx(exact.tolist(), rel=1e-4)


def test_recommend_index_falls_back_to_plain_inner_product_when_equal_norms_fail_the_gate():
    rng = np.random.default_rng(5)
    outputs = _clustered() * rng.uniform(0.1, 5.0, size=(3000, 1)).astype(np.float32)  # norms 50x apart
    config = IndexConfig(exact_below=1000, hnsw_ef_search=16, hnsw_m=8, recall_gate=0.8, recall_sample=200)
    main = build_main_indexes(_clustered(seed=9), outputs, np.zeros(3000, np.int64), config)
    assert (main.recommend.pad, main.recall["recommend"] >= 0.8) == (0, True)


def test_recall_gate_measures_only_the_rows_a_search_may_return():
    vectors = _clustered()
    served = np.arange(3000) % 2 == 0
    broken = build_index(vectors[np.random.default_rng(1).permutation(3000)], CONFIG, kind="hnsw")
    with pytest.raises(RecallGateError):
        gate_recall(broken, vectors, vectors, CONFIG, served)
    assert gate_recall(build_index(vectors, CONFIG, kind="hnsw"), vectors, vectors, CONFIG, served) >= 0.9


def test_recall_gate_passes_rows_so_few_that_the_api_searches_them_exactly():
    vectors = _clustered()
    broken = build_index(vectors[np.random.default_rng(1).permutation(3000)], CONFIG, kind="hnsw")
    assert gate_recall(broken, vectors, vectors, CONFIG, np.arange(3000) % 10 == 0) == 1.0


def test_exact_rows_skip_dead_rows_and_excluded_positions():
    rows = ExactRows(
        np.eye(4, dtype=np.float32), np.array([10, 11, 12, 13]), dead=np.array([False, True, False, False])
    )
    scores, positions = rows.search(np.array([1, 1, 1, 0], np.float32), 4, exclude=np.array([12]))
    assert (positions.tolist(), scores.tolist()) == ([10, 13], [1.0, 0.0])


def test_approximate_rows_skip_dead_rows():
    vectors = _clustered()
    dead = np.arange(3000) % 2 == 0
    rows = approximate_rows(build_ivf(vectors, CONFIG, nprobe=30), None, dead, offset=100)
    _, positions = rows.search(vectors[0], 20, exclude=np.zeros(0, np.int64))
    assert (len(positions), all(p % 2 == 1 for p in positions.tolist())) == (20, True)


def test_sparse_live_main_rows_kept_from_an_earlier_state_mask_the_rows_dead_since():
    vectors = _clustered()
    main = build_index(vectors, CONFIG, kind="hnsw")
    live = np.arange(3000) % 20 == 0
    earlier = merge_parts(main, live, ())
    live = live.copy()
    live[0] = False
    later = merge_parts(main, live, (), previous=earlier)
    _, positions = later.search(vectors[0], 20)
    assert later.main_exact.vectors is earlier.main_exact.vectors
    assert (0 in positions.tolist(), len(positions)) == (False, 20)


def test_recall_counts_a_returned_row_that_ties_with_the_kth_best_as_found():
    # 50 copies of each of 60 distinct rows: any 20 copies of the query's row are an exact top 20.
    base = _clustered(n=60, clusters=60, seed=3)
    vectors = np.ascontiguousarray(np.repeat(base, 50, axis=0))
    index = build_index(vectors, CONFIG)
    queries = base[:20]
    _, found = index.search(queries, 20)
    _, exact = build_index(vectors, CONFIG, kind="flat").search(queries, 20)
    assert any(set(f) != set(e) for f, e in zip(found.tolist(), exact.tolist(), strict=True))  # other copies
    assert measure_recall(index, vectors, queries) == 1.0


def test_a_main_search_through_a_dead_region_stops_widening_and_the_delta_answers(monkeypatch):
    # 2,000 dead copies of one row make an island the graph search cannot leave within its
    # breadth: widening to every live row found nothing and cost a search per doubling.
    import recsim_stream.index as index_module

    axis = np.eye(8, dtype=np.float32)
    others = l2_normalise(-axis[0] + 0.3 * np.random.default_rng(4).normal(size=(1000, 8)))
    main_vectors = np.vstack([np.repeat(axis[:1], 2000, axis=0), others]).astype(np.float32)
    main = build_index(main_vectors, CONFIG, kind="hnsw")
    live = np.arange(len(main_vectors)) >= 2000
    fresh = l2_normalise(axis[0] + 0.1 * np.random.default_rng(5).normal(size=(30, 8)))
    merged = merge_with_delta(main, live, fresh)
    fetched: list[int] = []
    search = type(main).search

    def counted(self, queries, k, params=None):
        fetched.append(k)
        return search(self, queries, k, params)

    monkeypatch.setattr(type(main), "search", counted)
    monkeypatch.setattr(index_module, "WIDEST_MAIN_FETCH", 64)
    _, positions = merged.search(axis[0], 20)
    assert fetched == [20, 40, 64]
    assert len(positions) == 20 and all(p >= main.size for p in positions.tolist())
