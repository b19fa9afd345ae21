import numpy as np
import pytest

from recsim_stream.config import IndexConfig
from recsim_stream.index import (
    RecallGateError,
    build_index,
    gate_recall,
    l2_normalise,
    measure_recall,
    merge_with_delta,
)


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


def _merged(main_vectors, delta_vectors, overridden, kind="flat"):
    main = build_index(main_vectors, CONFIG, kind=kind)
    live = np.ones(len(main_vectors), dtype=bool)
    live[overridden] = False
    return merge_with_delta(main, live, delta_vectors, margin=4)


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
    overridden = list(range(0, 200, 2))  # more than the margin of 4
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
