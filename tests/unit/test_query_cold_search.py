"""The new-item component over many cold rows: an IVF index for the top hits, a sampled normaliser."""

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import IndexConfig
from recsim_stream.new_items import _outside, cold_run
from recsim_stream.query import build_main, build_state, empty_like
from recsim_stream.snapshot import Snapshot, SnapshotArrays, SnapshotManifest

# 20k cold rows of 100 content clusters; IVF from 1,000 cold rows on.
CONFIG = IndexConfig(exact_below=1000, cold_nprobe=16)


def _catalogue(n=20_000, known=2_000, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(100, 32))
    content = centres[rng.integers(0, 100, n)] + 0.8 * rng.normal(size=(n, 32))
    content = (content / np.linalg.norm(content, axis=1, keepdims=True)).astype(np.float32)
    cold = np.ones(n, bool)
    cold[:known] = False
    return SnapshotArrays(
        ids=np.array([f"i{j}" for j in range(n)]),
        input_vectors=rng.normal(size=(n, 16)).astype(np.float32),
        output_vectors=rng.normal(size=(n, 16)).astype(np.float32),
        counts=np.where(cold, 0, 5).astype(np.int64),
        cold=cold,
        content_vectors=content,
    )


def _new_items(temperature, arrays=None):
    """(approximate, exact) new-item components of one state."""
    arrays = _catalogue() if arrays is None else arrays
    scoring = {"new_item_share": 0.1, "cold_temperature": temperature}
    manifest = SnapshotManifest(1, "full", 1, None, 16, arrays.count, {}, None, 0.0, scoring=scoring)
    main = build_main(Snapshot(manifest, arrays), CONFIG, background=False)
    approximate = build_state(main, empty_like(arrays), manifest, CONFIG).new_items
    return approximate, dataclasses.replace(approximate, main_run=None), arrays


def _queries(arrays, count=50, seed=1):
    """Content queries near known items' content, as sessions make them."""
    rng = np.random.default_rng(seed)
    return arrays.content_vectors[rng.choice(2000, size=count, replace=False)]


def test_cold_rows_get_an_ivf_index_from_the_exact_threshold_on():
    approximate, exact, _ = _new_items(0.1)
    assert (approximate.main_run.index.kind, approximate.main_run.index.size, exact.main_run) == (
        "ivf",
        18_000,
        None,
    )


def test_the_approximate_cold_top_20_recalls_the_exact_one():
    approximate, exact, arrays = _new_items(0.1)
    found = []
    for query in _queries(arrays):
        _, got = approximate.best(query, np.zeros(16, np.float32), 20, set())
        _, truth = exact.best(query, np.zeros(16, np.float32), 20, set())
        found.append(len(set(got.tolist()) & set(truth.tolist())) / 20)
    assert float(np.mean(found)) >= 0.95


def test_the_estimated_normaliser_is_within_ten_percent_of_the_exact_one():
    # log P of a row returned by both = its logit - log Z: their difference is the error in log Z.
    for temperature in (0.05, 0.2, 1.0):
        approximate, exact, arrays = _new_items(temperature)
        errors = []
        for query in _queries(arrays):
            log_p, got = approximate.best(query, np.zeros(16, np.float32), 1, set())
            exact_log_p, truth = exact.best(query, np.zeros(16, np.float32), 1, set())
            assert got.tolist() == truth.tolist()
            errors.append(abs(float(log_p[0] - exact_log_p[0])))
        assert max(errors) <= np.log(1.1), (temperature, max(errors))


def test_banned_and_overridden_cold_rows_are_never_returned_by_the_approximate_search():
    approximate, exact, arrays = _new_items(0.1)
    query = _queries(arrays, count=1)[0]
    _, top = exact.best(query, np.zeros(16, np.float32), 10, set())
    dead = np.zeros(approximate.main.size, bool)
    dead[np.searchsorted(approximate.main.positions, top[:5])] = True
    run = approximate.main_run
    overridden = dataclasses.replace(
        approximate,
        main_dead=dead,
        main_live=approximate.main_live - 5,
        main_run=cold_run(run.index, run.positions, dead, run.sample, run.sample_content),
    )
    _, got = overridden.best(query, np.zeros(16, np.float32), 10, {int(top[5])})
    assert set(got.tolist()).isdisjoint(top[:6].tolist())
    assert len(got) == 10


def test_a_session_whose_nearest_cold_rows_all_died_gets_live_ones_from_one_search(monkeypatch):
    # Rows re-encoded together die together: the 3,000 cold rows nearest the query are dead, far
    # more than the head. The search selects live rows itself instead of widening past the dead.
    approximate, exact, arrays = _new_items(0.1)
    query = _queries(arrays, count=1)[0]
    run = approximate.main_run
    dead = np.zeros(run.positions.size, bool)
    dead[np.argsort(-(arrays.content_vectors[run.positions] @ query))[:3000]] = True
    overridden = dataclasses.replace(
        approximate,
        main_dead=dead,
        main_live=int((~dead).sum()),
        main_run=cold_run(run.index, run.positions, dead, run.sample, run.sample_content),
    )
    searches = []
    search = type(run.index).search
    monkeypatch.setattr(type(run.index), "search", lambda *a, **kw: searches.append(a[2]) or search(*a, **kw))
    _, got = overridden.best(query, np.zeros(16, np.float32), 10, set())
    assert len(searches) == 1
    assert len(got) == 10 and not set(got.tolist()) & set(run.positions[dead].tolist())


def test_below_the_threshold_cold_rows_are_searched_exactly():
    approximate, _, _ = _new_items(0.1, _catalogue(n=2_500, known=2_000))
    assert approximate.main_run is None


def test_a_session_without_content_scores_indexed_cold_rows_by_their_uniform_sample():
    # No index covers learned scores: the sample stands for the rows, top hits and normaliser alike.
    approximate, _, arrays = _new_items(0.1)
    sampled = set(approximate.main.positions[approximate.main.sample].tolist())
    cold_outputs = arrays.output_vectors[arrays.cold]
    for query in np.random.default_rng(2).normal(scale=0.1, size=(10, 16)).astype(np.float32):
        log_p, got = approximate.best(None, query, 20, {int(approximate.main.positions[0])})
        assert len(got) == 20 and set(got.tolist()) <= sampled
        scores = arrays.output_vectors[got] @ query
        assert np.all(np.diff(scores) <= 1e-6)  # best first
        estimated = scores - log_p  # each row's score minus its log P: the estimated log normaliser
        exact = np.log(np.exp(cold_outputs @ query).sum())
        assert np.allclose(estimated, estimated[0], atol=1e-4)
        assert abs(float(estimated[0]) - exact) <= np.log(1.1)


@settings(max_examples=200, deadline=None)
@given(
    sample=st.sets(st.integers(0, 500), max_size=60).map(lambda s: np.array(sorted(s), dtype=np.int64)),
    rows=st.lists(st.integers(0, 520), max_size=40).map(lambda r: np.array(r, dtype=np.int64)),
)
def test_outside_marks_the_sample_entries_not_among_the_head_rows(sample, rows):
    np.testing.assert_array_equal(_outside(sample, rows), ~np.isin(sample, rows))
