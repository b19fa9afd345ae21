import tempfile

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.config import IndexConfig, SnapshotConfig
from recsim_stream.delta_log import DeltaLog
from recsim_stream.query import build_main, serve_view
from recsim_stream.snapshot import Snapshot, SnapshotArrays, SnapshotManifest, SnapshotStore, apply_delta

# numpy's fixed-width unicode strips trailing NULs, so ids never contain them (nor surrogates).
_ID = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12
)
_FLOAT = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def snapshot_arrays(draw, ids=None, dim=None):
    ids = ids if ids is not None else draw(st.lists(_ID, max_size=20, unique=True))
    dim = dim if dim is not None else draw(st.integers(1, 4))
    n = len(ids)
    vectors = st.lists(_FLOAT, min_size=n * dim, max_size=n * dim)
    return SnapshotArrays(
        ids=np.array(ids, dtype=f"U{max([len(i) for i in ids] + [1])}"),
        input_vectors=np.array(draw(vectors), dtype=np.float32).reshape(n, dim),
        output_vectors=np.array(draw(vectors), dtype=np.float32).reshape(n, dim),
        counts=np.array(draw(st.lists(st.integers(0, 2**62), min_size=n, max_size=n)), dtype=np.int64),
        cold=np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool),
    )


def _equal(a: SnapshotArrays, b: SnapshotArrays) -> bool:
    names = ("ids", "input_vectors", "output_vectors", "counts", "cold")
    return all(np.array_equal(getattr(a, n), getattr(b, n)) for n in names)


@settings(max_examples=40, deadline=None)
@given(
    snapshot_arrays(),
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.dictionaries(st.integers(0, 64), st.integers(0, 2**62), max_size=3),
        max_size=2,
    ),
)
def test_write_then_read_returns_the_same_snapshot(arrays, offsets):
    with tempfile.TemporaryDirectory() as root:
        store = SnapshotStore(SnapshotConfig(dir=root))
        store.write(1, arrays, offsets=offsets, newest_event_ts=12.5)
        loaded = store.read(1)
    assert _equal(loaded.arrays, arrays)
    assert loaded.manifest.offsets == offsets


@settings(max_examples=40, deadline=None)
@given(st.lists(_ID, min_size=1, max_size=15, unique=True), st.data())
def test_base_plus_delta_equals_the_newest_value_of_every_id(all_ids, data):
    base_ids = data.draw(st.lists(st.sampled_from(all_ids), unique=True))
    delta_ids = data.draw(st.lists(st.sampled_from(all_ids), unique=True))
    base = data.draw(snapshot_arrays(ids=base_ids, dim=2))
    delta = data.draw(snapshot_arrays(ids=delta_ids, dim=2))
    merged = apply_delta(base, delta)
    expected = {i: base.counts[j] for j, i in enumerate(base.ids.tolist())}
    expected.update({i: delta.counts[j] for j, i in enumerate(delta.ids.tolist())})
    assert dict(zip(merged.ids.tolist(), merged.counts.tolist(), strict=True)) == expected
    assert len(merged.ids) == len(expected)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(_ID, min_size=1, max_size=10, unique=True),
    st.lists(st.lists(st.integers(0, 9), max_size=5), min_size=1, max_size=4),
)
def test_loading_a_delta_chain_equals_applying_it_in_memory(ids, delta_picks):
    def rows(chosen, step):
        n = len(chosen)
        return SnapshotArrays(
            ids=np.array(chosen, dtype="U12"),
            input_vectors=np.full((n, 2), step, np.float32),
            output_vectors=np.full((n, 2), -step, np.float32),
            counts=np.full(n, step, np.int64),
            cold=np.zeros(n, bool),
        )

    expected = rows(ids, 0)
    with tempfile.TemporaryDirectory() as root:
        store = SnapshotStore(SnapshotConfig(dir=root, keep=1))
        store.write(1, expected, offsets={}, newest_event_ts=None)
        for step, picks in enumerate(delta_picks, start=1):
            chosen = sorted({ids[p % len(ids)] for p in picks})
            store.write(step + 1, rows(chosen, step), offsets={}, newest_event_ts=None, parent_version=step)
            expected = apply_delta(expected, rows(chosen, step))
        loaded = store.load(len(delta_picks) + 1)
    assert _equal(loaded.arrays, expected)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(_ID, min_size=1, max_size=12, unique=True),
    st.lists(
        st.tuples(st.lists(st.integers(0, 11), max_size=5), st.lists(st.integers(0, 11), max_size=3)),
        min_size=1,
        max_size=5,
    ),
)
def test_a_chain_that_writes_and_removes_ids_is_served_as_a_dict_of_the_newest_rows(ids, steps):
    """Each delta writes some ids and removes others: the chain loaded from disk, and the query API's
    state appending the deltas one at a time, serve exactly the ids a dict would hold, each with its
    newest row."""

    def rows(chosen, step, removed=None):
        n = len(chosen)
        return SnapshotArrays(
            ids=np.array(chosen, dtype="U12").reshape(-1),
            input_vectors=np.full((n, 2), step + 1, np.float32),
            output_vectors=np.full((n, 2), -step - 1, np.float32),
            counts=np.full(n, step + 1, np.int64),
            cold=np.zeros(n, bool),
            removed_ids=None if removed is None else np.array(removed, dtype="U12").reshape(-1),
        )

    newest = dict.fromkeys(ids, 1)
    base = rows(ids, 0)
    log = DeltaLog(build_main(Snapshot(_manifest(1, None), base), IndexConfig()), IndexConfig())
    state = None
    with tempfile.TemporaryDirectory() as root:
        store = SnapshotStore(SnapshotConfig(dir=root, keep=1))
        store.write(1, base, offsets={}, newest_event_ts=None)
        for step, (written, removed) in enumerate(steps, start=1):
            chosen = sorted({ids[p % len(ids)] for p in written})
            gone = sorted({ids[p % len(ids)] for p in removed} - set(chosen))
            delta = rows(chosen, step, gone)
            store.write(step + 1, delta, offsets={}, newest_event_ts=None, parent_version=step)
            state = serve_view(log.append([delta]), _manifest(step + 1, step), IndexConfig(), state)
            for item_id in gone:
                newest.pop(item_id, None)
            newest.update(dict.fromkeys(chosen, step + 1))
        loaded = store.load(len(steps) + 1).arrays
    assert dict(zip(loaded.ids.tolist(), loaded.counts.tolist(), strict=True)) == newest
    served = {}
    for item_id in state.positions:
        arrays, row = state.row(state.positions[item_id])
        served[item_id] = int(arrays.counts[row])
    assert served == newest
    assert state.item_count == len(newest)
    assert state.positions.positions_of(ids).tolist().count(-1) == len(ids) - len(newest)


def _manifest(version, parent):
    return SnapshotManifest(version, "full" if parent is None else "delta", 1, parent, 2, 0, {}, None, 0.0)
