"""The append-only delta log: a swap appends the new delta's rows, old states stay as they were."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
from recsim_stream.delta_log import Appendable, DeltaLog, IdLookup, IdRun, IdRuns, Segments, StatePositions
from recsim_stream.index import build_index
from recsim_stream.query import IndexHolder, SnapshotWatcher, UnknownItem, build_main, serve_view
from recsim_stream.snapshot import Snapshot, SnapshotArrays, SnapshotError, SnapshotManifest, SnapshotStore
from recsim_stream.threads import ThreadPriority

INDEX = IndexConfig()
SCORING = {"new_item_share": 0.2, "cold_temperature": 0.5}


def _rows(rng, ids, cold_share=0.3, dim=8, width=4):
    n = len(ids)
    content = rng.normal(size=(n, width)).astype(np.float32)
    cold = rng.random(n) < cold_share
    return SnapshotArrays(
        ids=np.array(ids, dtype="U"),
        input_vectors=rng.normal(size=(n, dim)).astype(np.float32),
        output_vectors=rng.normal(size=(n, dim)).astype(np.float32),
        counts=np.where(cold, 0, rng.integers(1, 50, n)).astype(np.int64),
        cold=cold,
        content_vectors=content / np.linalg.norm(content, axis=1, keepdims=True),
    )


def _manifest(version, kind="delta"):
    return SnapshotManifest(
        version, kind, 1, None if kind == "full" else version - 1, 8, 0, {}, None, 0.0, scoring=SCORING
    )


def _chain(seed=0, base=300, deltas=8):
    """A full snapshot and deltas that update old ids (several times), add new ones (some with ids
    longer than any before) and turn cold rows known."""
    rng = np.random.default_rng(seed)
    full = _rows(rng, [f"i{j}" for j in range(base)])
    chain, fresh = [], base
    for d in range(deltas):
        old = rng.choice(fresh, size=120, replace=False)
        new = [f"i{j}" + "x" * (d % 3) * 5 for j in range(fresh, fresh + 200)]
        fresh += 200
        chain.append(_rows(rng, [f"i{j}" for j in old] + new))
    return full, chain


def _main(full):
    return build_main(Snapshot(_manifest(1, "full"), full), INDEX)


def _answers(state, queries):
    holder = IndexHolder(ApiConfig(session_items=2))
    holder.swap(state)
    out = {"count": state.item_count}
    for item in queries:
        arrays, row = state.row(state.positions[item])
        out[item] = (arrays.input_vectors[row].tolist(), int(arrays.counts[row]), bool(arrays.cold[row]))
        out[f"similar {item}"] = holder.similar(item, 10)[1]
        out[f"recommend {item}"] = holder.recommend([item, queries[0]], 10)[1]
    return out


def _queries(chain, full, updated_later=()):
    """Ids to ask about: of the full, of the first and last deltas, and ``updated_later`` (ids of the
    full that later deltas move)."""
    later = [str(i) for d in updated_later for i in d.ids[:120] if str(i) in set(full.ids.tolist())][:3]
    return [str(full.ids[0]), str(chain[0].ids[0]), str(chain[-1].ids[-1]), str(chain[-1].ids[150]), *later]


def test_a_state_after_swaps_equals_the_state_built_from_the_same_snapshots_at_once():
    full, chain = _chain()
    main = _main(full)
    log, state = DeltaLog(main, INDEX), None
    for version, delta in enumerate(chain, start=2):
        state = serve_view(log.append([delta]), _manifest(version), INDEX, state)
    at_once = serve_view(DeltaLog(main, INDEX).append(chain), _manifest(len(chain) + 1), INDEX)
    queries = _queries(chain, full)
    assert _answers(state, queries) == _answers(at_once, queries)


def test_an_old_state_answers_as_before_after_later_swaps():
    full, chain = _chain()
    main = _main(full)
    log = DeltaLog(main, INDEX)
    old = serve_view(log.append(chain[:2]), _manifest(3), INDEX)
    queries = _queries(chain[:2], full, updated_later=chain[2:])
    assert len(queries) == 7
    before = _answers(old, queries)
    state = old
    for version, delta in enumerate(chain[2:], start=4):
        state = serve_view(log.append([delta]), _manifest(version), INDEX, state)
    assert log.last.arrays.count == 8 * 320
    assert _answers(old, queries) == before


def test_a_state_serves_the_newest_row_of_an_id_updated_twice():
    full, _ = _chain()
    rng = np.random.default_rng(3)
    first, second = _rows(rng, ["i7"], cold_share=0), _rows(rng, ["i7"], cold_share=0)
    log = DeltaLog(_main(full), INDEX)
    one = serve_view(log.append([first]), _manifest(2), INDEX)
    two = serve_view(log.append([second]), _manifest(3), INDEX, one)
    assert one.input_vector(one.positions["i7"]).tolist() == first.input_vectors[0].tolist()
    assert two.input_vector(two.positions["i7"]).tolist() == second.input_vectors[0].tolist()
    assert (one.item_count, two.item_count, two.view.live_rows, two.delta.count) == (300, 300, 1, 2)


def test_a_superseded_row_is_never_returned():
    full, _ = _chain()
    rng = np.random.default_rng(4)
    log = DeltaLog(_main(full), INDEX)
    state = serve_view(log.append([_rows(rng, ["i7"], cold_share=0)]), _manifest(2), INDEX)
    moved = _rows(rng, ["i7"], cold_share=0)
    state = serve_view(log.append([moved]), _manifest(3), INDEX, state)
    holder = IndexHolder(ApiConfig())
    holder.swap(state)
    _, results = holder.similar("i8", 300)
    assert [i for i, _ in results].count("i7") == 1


def test_a_delta_of_another_content_width_is_refused_and_appends_nothing():
    full, chain = _chain()
    log = DeltaLog(_main(full), INDEX)
    log.append(chain[:1])
    wide = _rows(np.random.default_rng(5), ["n1"], width=6)
    with pytest.raises(SnapshotError, match="one width"):
        log.append([chain[1], wide])
    rows = log.ids.rows_of(np.array(["n1", str(chain[1].ids[-1])]))
    assert (log.last.arrays.count, rows.tolist()) == (320, [-1, -1])


def test_the_watcher_appends_each_delta_to_the_log_of_its_base(tmp_path):
    full, chain = _chain(deltas=3)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=10))
    store.write(1, full, offsets={}, newest_event_ts=None, scoring=SCORING)
    holder = IndexHolder(ApiConfig())
    watcher = SnapshotWatcher(store, holder, INDEX, poll_s=0.01)
    watcher.poll_once()
    first = holder.state
    for version, delta in enumerate(chain, start=2):
        store.write(
            version, delta, offsets={}, newest_event_ts=None, parent_version=version - 1, scoring=SCORING
        )
        watcher.poll_once()
    assert (holder.state.main is first.main, holder.state.view.log is first.view.log) == (True, True)
    assert (holder.state.delta.count, holder.state.version) == (3 * 320, 4)


SEGMENTED = IndexConfig(exact_below=400, delta_seal_rows=400, recall_sample=50)


def _clustered_rows(rng, ids, centres):
    """Rows whose input and content vectors cluster (as the content tower's do), a third of them cold."""
    rows = _rows(rng, ids)
    picked = centres[rng.integers(0, len(centres), len(ids))]
    inputs = (picked + 0.1 * rng.normal(size=picked.shape)).astype(np.float32)
    content = inputs[:, :4] / np.linalg.norm(inputs[:, :4], axis=1, keepdims=True)
    return SnapshotArrays(rows.ids, inputs, rows.output_vectors, rows.counts, rows.cold, content)


def _segmented_log(chunks=8, size=200, config=SEGMENTED):
    """A log over a small base, fed ``chunks`` deltas of new ids, waiting for each background build."""
    rng = np.random.default_rng(9)
    centres = rng.normal(size=(20, 8))
    full = _clustered_rows(rng, [f"i{j}" for j in range(300)], centres)
    log = DeltaLog(build_main(Snapshot(_manifest(1, "full"), full), config), config)
    state = None
    for c in range(chunks):
        delta = _clustered_rows(rng, [f"n{c}-{j}" for j in range(size)], centres)
        state = serve_view(log.append([delta]), _manifest(c + 2), config, state)
        assert log.wait_for_builds(timeout=30)
    return log, state


def test_sealed_delta_rows_are_searched_through_runs_merged_like_a_binary_counter():
    log, _ = _segmented_log()
    log.append([])  # takes in the last run and starts merging the three
    assert log.wait_for_builds(timeout=30)
    view = log.append([])
    similar_runs = [part.size for part in view.similar[:-1]]
    cold_runs = [run.index.size for run in view.cold_runs]
    # 1,600 rows, a build for every 400 unindexed: runs [400], [400, 400] -> [800], [800, 400],
    # [800, 400, 400] -> [1,600].
    assert (similar_runs, view.similar[-1].size) == ([1600], 0)
    assert sum(cold_runs) + view.cold_content.size == view.cold.size
    assert cold_runs == sorted(cold_runs, reverse=True)


def test_the_newest_rows_are_sealed_while_older_runs_merge():
    release = threading.Event()

    def build(rows, _queries):
        if len(rows) > 400:  # a merge: held until released
            release.wait(30)
        return build_index(rows, INDEX, kind="flat")

    segments = Segments(build, IndexConfig(exact_below=400, delta_seal_rows=400), "test")
    table = np.random.default_rng(0).normal(size=(1200, 4)).astype(np.float32)
    for end in (400, 800):
        segments.refresh(table[:end])
        assert segments.wait(30)
    runs = segments.refresh(table)  # takes in the second run: merges the two, seals the newest rows
    deadline = time.monotonic() + 30
    while len(runs) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
        runs = segments.refresh(table)
    assert [(run.start, run.end) for run in runs] == [(0, 400), (400, 800), (800, 1200)]
    release.set()
    assert segments.wait(30)
    assert [(run.start, run.end) for run in segments.refresh(table)] == [(0, 800), (800, 1200)]


def test_a_superseded_row_in_a_sealed_run_is_never_returned():
    log, state = _segmented_log(chunks=2)
    state = serve_view(log.append([]), _manifest(4), SEGMENTED, state)
    assert len(state.view.similar) == 2  # one run, and the (empty) rows after it
    sealed = state.view.arrays
    # Both rows move onto n0-5's vector: their new copies come first, their sealed copies never.
    moved = SnapshotArrays(
        np.array(["n0-0", "n0-1"]),
        np.repeat(sealed.input_vectors[5:6], 2, axis=0),
        sealed.output_vectors[:2],
        np.array([3, 3]),
        np.array([False, False]),
        sealed.content_vectors[:2],
    )
    state = serve_view(log.append([moved]), _manifest(5), SEGMENTED, state)
    ids = [i for i, _ in _answer(state, "n0-5", k=300)]
    assert (sorted(ids[:2]), ids.count("n0-0"), ids.count("n0-1"), len(ids)) == (["n0-0", "n0-1"], 1, 1, 300)


@pytest.mark.parametrize(
    "endpoint, table",
    [("similar", lambda view: view.similar), ("recommend", lambda view: view.known_parts)],
)
def test_search_through_sealed_runs_finds_what_exact_search_finds(endpoint, table):
    log, state = _segmented_log(chunks=4)
    log.append([])  # takes in the last runs and starts their merges
    assert log.wait_for_builds(timeout=30)
    approximate = serve_view(log.append([]), _manifest(6), SEGMENTED, state)
    exact = serve_view(DeltaLog(log.main, INDEX).append([log.last.arrays]), _manifest(6), INDEX)
    assert len(table(approximate.view)) > 1  # a sealed run, and the rows after it
    found = []
    for item in [f"n{c}-{j}" for c in range(4) for j in range(0, 200, 40)]:
        got = {i for i, _ in _answer(approximate, item, endpoint=endpoint)}
        truth = {i for i, _ in _answer(exact, item, endpoint=endpoint)}
        found.append(len(got & truth) / max(1, len(truth)))
    assert np.mean(found) >= 0.9


def test_a_session_without_content_scores_a_sealed_cold_run_by_its_sample_and_the_rest_exactly():
    config = dataclasses.replace(SEGMENTED, cold_tail_sample=100)
    log, state = _segmented_log(config=config)
    log.append([])
    assert log.wait_for_builds(timeout=30)
    state = serve_view(log.append([]), _manifest(10), config, state)
    new, view = state.new_items, state.view
    (run,) = new.delta_runs
    # Rows the run stands for by its sample, and the rows scored exactly: the main cold rows, the
    # delta's cold rows after the run.
    eligible = set(run.positions[run.sample].tolist()) | set(new.main.positions.tolist())
    eligible |= set(view.cold.positions[run.index.size :].tolist())
    live = np.concatenate([
        new.main.outputs[~new.main_dead], view.cold.vectors[~view.cold.dead][:, :-1]
    ])  # fmt: skip
    for query in np.random.default_rng(4).normal(scale=0.1, size=(10, 8)).astype(np.float32):
        log_p, got = new.best(None, query, 20, set())
        assert len(got) == 20 and set(got.tolist()) <= eligible
        scores = np.array([state.row(p)[0].output_vectors[state.row(p)[1]] @ query for p in got])
        estimated = scores - log_p
        assert np.allclose(estimated, estimated[0], atol=1e-4)
        assert abs(float(estimated[0]) - np.log(np.exp(live @ query).sum())) <= np.log(1.1)


def _answer(state, item, k=10, endpoint="similar"):
    holder = IndexHolder(ApiConfig())
    holder.swap(state)
    if endpoint == "recommend":
        return holder.recommend([item], k)[1]
    return holder.similar(item, k)[1]


def test_a_view_of_an_appendable_is_unchanged_when_it_grows_or_takes_wider_strings():
    ids = Appendable(np.dtype("U2"), reserve=2)
    ids.extend(np.array(["a", "bb"]))
    before = ids.view
    ids.extend(np.array(["ccc", "d", "e"]))  # past the reserve, and wider
    assert (before.tolist(), ids.view.tolist(), ids.view.dtype.itemsize) == (
        ["a", "bb"],
        ["a", "bb", "ccc", "d", "e"],
        12,
    )


def test_rows_whose_run_the_recall_gate_refused_stay_searched_exactly():
    refusing = IndexConfig(
        exact_below=400, delta_seal_rows=400, ivf_nprobe=1, recall_gate=1.0, recall_sample=50
    )
    rng = np.random.default_rng(11)
    full = _rows(rng, [f"i{j}" for j in range(300)], cold_share=0)
    log = DeltaLog(build_main(Snapshot(_manifest(1, "full"), full), refusing), refusing)
    state = serve_view(
        log.append([_rows(rng, [f"n{j}" for j in range(500)], cold_share=0)]), _manifest(2), refusing
    )
    assert log.wait_for_builds(timeout=30)
    state = serve_view(
        log.append([_rows(rng, [f"m{j}" for j in range(500)], cold_share=0)]), _manifest(3), refusing, state
    )
    assert log.wait_for_builds(timeout=30)
    state = serve_view(log.append([]), _manifest(4), refusing, state)
    assert [part.size for part in state.view.similar] == [1000]
    assert len(_answer(state, "n0", k=1299)) == 1299


def _append(runs: IdRuns, ids: list[str], start: int) -> tuple[IdRuns, np.ndarray]:
    run, repeated = IdRun.of(np.array(ids, dtype="U"), start)
    return runs.appended(run), repeated


def test_runs_find_the_newest_row_of_every_id_as_a_dict_would():
    rng = np.random.default_rng(0)
    runs, newest, start, history = IdRuns(), {}, 0, []
    for size in rng.integers(1, 400, 60):
        ids = [f"x{j}" + "y" * int(j % 4) for j in rng.choice(3000, size=int(size), replace=False)]
        runs, _ = _append(runs, ids, start)
        newest.update({i: start + k for k, i in enumerate(ids)})
        start += len(ids)
        history.append((runs, dict(newest)))
    asked = np.array([f"x{j}" + "y" * (j % 4) for j in range(3200)] + ["x1y", "x", ""])
    for then, expected in history[::7]:  # earlier runs are untouched by later appends
        assert then.rows_of(asked).tolist() == [expected.get(str(i), -1) for i in asked]
        assert [then.row_of(str(i)) for i in asked[:50]] == [expected.get(str(i), -1) for i in asked[:50]]
    assert len(runs.runs) <= 2 * np.log2(start)


def test_an_id_named_twice_in_one_delta_is_served_from_its_later_row():
    runs, repeated = _append(IdRuns(), ["a", "b", "a"], start=10)
    assert (runs.row_of("a"), runs.row_of("b"), repeated.tolist()) == (12, 11, [10])


def test_ids_longer_than_any_listed_are_absent_rather_than_cut_short():
    lookup = IdLookup(np.array(["ab", "b"]))
    assert lookup.positions_of(np.array(["abc", "b", "a"])).tolist() == [-1, 1, -1]
    runs, _ = _append(IdRuns(), ["ab"], start=0)
    runs, _ = _append(runs, ["abcdef"], start=1)  # a wider run merged into a narrower one
    assert runs.rows_of(np.array(["ab", "abcdef", "abc"])).tolist() == [0, 1, -1]


def test_state_positions_of_many_ids_agree_with_one_at_a_time():
    full, chain = _chain()
    main = _main(full)
    log, state = DeltaLog(main, INDEX), None
    for version, delta in enumerate(chain, start=2):
        state = serve_view(log.append([delta]), _manifest(version), INDEX, state)
    positions = state.positions
    assert isinstance(positions, StatePositions)
    asked = [str(full.ids[0]), str(chain[0].ids[0]), str(chain[-1].ids[-1]), "nope", str(full.ids[0]) + "\0"]
    expected = [positions.get(i, -1) for i in asked[:4]] + [-1]
    assert positions.positions_of(asked).tolist() == expected
    assert min(expected[:3]) >= 0 and positions.positions_of([]).tolist() == []


def test_a_delta_appended_after_a_state_leaves_its_ids_as_they_were():
    full, _ = _chain()
    rng = np.random.default_rng(7)
    log = DeltaLog(_main(full), INDEX)
    one = serve_view(log.append([_rows(rng, ["i7", "new"], cold_share=0)]), _manifest(2), INDEX)
    two = serve_view(log.append([_rows(rng, ["new", "newer"], cold_share=0)]), _manifest(3), INDEX, one)
    n_main = full.count
    assert [one.positions.get(i) for i in ("i7", "new", "newer")] == [n_main, n_main + 1, None]
    assert [two.positions.get(i) for i in ("i7", "new", "newer")] == [n_main, n_main + 2, n_main + 3]


def test_an_appendable_grown_ahead_keeps_every_row_and_every_earlier_view():
    column = Appendable(np.int64, reserve=1024, isolated=ThreadPriority())  # base pages from 4 MB on
    views = []
    for start in range(0, 1_000_000, 5_000):  # past 3/4 of each room, a doubled copy is made ahead
        column.extend(np.arange(start, start + 5_000))
        views.append(column.view)
    assert np.array_equal(column.view, np.arange(1_000_000))
    assert all(np.array_equal(view, np.arange(len(view))) for view in views)


def _removal(ids, dim=8, width=4):
    """A delta that only removes ``ids``."""
    empty = _rows(np.random.default_rng(0), [], dim=dim, width=width)
    return dataclasses.replace(empty, removed_ids=np.array(ids, dtype="U"))


def _served_ids(holder, item, k=1000):
    return {i for i, _ in holder.similar(item, k)[1]} | {i for i, _ in holder.recommend([item], k)[1]}


def test_an_id_a_delta_removes_is_served_no_more_while_an_older_state_still_serves_it():
    full, _ = _chain()
    cold_id = str(full.ids[full.cold][0])
    rng = np.random.default_rng(5)
    log = DeltaLog(_main(full), INDEX)
    one = serve_view(log.append([_rows(rng, ["new", "i8"], cold_share=0)]), _manifest(2), INDEX)
    gone = ["i7", cold_id, "new", "never-served"]
    two = serve_view(log.append([_removal(gone)]), _manifest(3), INDEX, one)
    before, after = IndexHolder(ApiConfig()), IndexHolder(ApiConfig())
    before.swap(one)
    after.swap(two)
    assert two.positions.positions_of(gone).tolist() == [-1] * 4
    assert [g in two.positions for g in gone] == [False] * 4
    assert sorted(two.positions) == sorted(set(one.positions) - set(gone))
    assert (one.item_count, two.item_count) == (301, 298)
    assert not _served_ids(after, "i8") & set(gone)
    with pytest.raises(UnknownItem):
        after.similar("i7", 5)
    assert before.recommend(["i7"], 5)[2] == [] and after.recommend(["i8", "new"], 5)[2] == ["new"]
    assert {"i7", cold_id, "new"} <= _served_ids(before, "i8")


def test_an_id_removed_then_written_again_is_served_from_its_new_row():
    full, _ = _chain()
    rng = np.random.default_rng(6)
    log = DeltaLog(_main(full), INDEX)
    state = serve_view(log.append([_removal(["i7"])]), _manifest(2), INDEX)
    again = _rows(rng, ["i7"], cold_share=0)
    state = serve_view(log.append([again]), _manifest(3), INDEX, state)
    assert state.input_vector(state.positions["i7"]).tolist() == again.input_vectors[0].tolist()
    assert state.item_count == 300
    holder = IndexHolder(ApiConfig())
    holder.swap(state)
    assert [i for i, _ in holder.similar("i8", 400)[1]].count("i7") == 1


def test_a_state_after_swaps_with_removals_equals_the_state_built_from_the_same_snapshots_at_once():
    full, chain = _chain()
    rng = np.random.default_rng(8)
    removed = [
        str(i) for i in rng.choice(np.concatenate([full.ids, chain[0].ids, chain[3].ids]), 60, replace=False)
    ]
    chain = [*chain[:2], _removal(removed[:30]), *chain[2:5], _removal(removed[30:]), *chain[5:]]
    main = _main(full)
    log, state = DeltaLog(main, INDEX), None
    for version, delta in enumerate(chain, start=2):
        state = serve_view(log.append([delta]), _manifest(version), INDEX, state)
    at_once = serve_view(DeltaLog(main, INDEX).append(chain), _manifest(len(chain) + 1), INDEX)
    queries = [q for q in _queries(chain, full) if q in state.positions]
    assert len(queries) >= 3
    assert _answers(state, queries) == _answers(at_once, queries)
    assert sorted(state.positions) == sorted(at_once.positions)
    written_after = {r for r in removed[:30] if any(r in d.ids for d in chain[3:])} | {
        r for r in removed[30:] if any(r in d.ids for d in chain[7:])
    }
    assert 0 < len(written_after) < 60
    assert {r for r in removed if r in state.positions} == written_after


def test_a_removed_row_in_a_sealed_run_is_never_returned():
    log, state = _segmented_log(chunks=2)
    state = serve_view(log.append([]), _manifest(4), SEGMENTED, state)
    assert len(state.view.similar) == 2  # one run, and the (empty) rows after it
    state = serve_view(log.append([_removal(["n0-0", "n0-1", "i3"])]), _manifest(5), SEGMENTED, state)
    for endpoint in ("similar", "recommend"):
        ids = [i for i, _ in _answer(state, "n0-5", k=300, endpoint=endpoint)]
        assert not {"n0-0", "n0-1", "i3"} & set(ids) and len(ids) == 300
