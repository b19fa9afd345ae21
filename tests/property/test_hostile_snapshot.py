"""Hostile snapshot folders: the loader raises SnapshotError, and the query side keeps serving the
snapshot it had (the very same state) and counts the refusal. Each example copies a store holding a
good v1 and a v2 (full, or a delta on v1), damages v2 and lets a real SnapshotWatcher try it."""

import dataclasses
import hashlib
import io
import itertools
import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
from recsim_stream.metrics import ApiMetrics, new_registry
from recsim_stream.query import IndexHolder, SnapshotWatcher
from recsim_stream.snapshot import MANIFEST, SnapshotArrays, SnapshotError, SnapshotStore, folder_name

API = ApiConfig(max_k=50)
INDEX = IndexConfig(recall_sample=8)
SCORING = {"new_item_share": 0.2, "cold_temperature": 0.1}
ARRAYS = ("ids", "input_vectors", "output_vectors", "counts", "cold", "content_vectors")
HYPOTHESIS = settings(max_examples=20, deadline=None)
_NEXT = itertools.count()


def _arrays(ids: list[str], seed: int, dim: int = 4) -> SnapshotArrays:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return SnapshotArrays(
        ids=np.array(ids, dtype="U"),
        input_vectors=rng.normal(size=(n, dim)).astype(np.float32),
        output_vectors=rng.normal(size=(n, dim)).astype(np.float32),
        counts=np.arange(n, dtype=np.int64),
        cold=np.array([j % 3 == 0 for j in range(n)], dtype=bool),
        content_vectors=rng.normal(size=(n, 3)).astype(np.float32),
    )


def _store(root) -> SnapshotStore:
    return SnapshotStore(SnapshotConfig(dir=str(root), keep=10))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Template stores (v1 + a full or delta v2; a delta of another dim) and the served v1 state."""
    scratch = tmp_path_factory.mktemp("hostile-snapshot")
    templates = {}
    for kind, v2, parent in (
        ("full", _arrays(["a", "b", "ü/é 😀", "new"], seed=2), None),
        ("delta", _arrays(["b", "new"], seed=3), 1),
    ):
        store = _store(scratch / kind)
        store.write(1, _arrays(list("abcdef"), seed=1), offsets={}, newest_event_ts=None, scoring=SCORING)
        store.write(
            2, v2, offsets={"events": {0: 9}}, newest_event_ts=5.0, parent_version=parent, scoring=SCORING
        )
        templates[kind] = scratch / kind
    removing = _store(scratch / "delta-removing")  # a delta that also removes ids (deleted items)
    removing.write(1, _arrays(list("abcdef"), seed=1), offsets={}, newest_event_ts=None, scoring=SCORING)
    v2 = dataclasses.replace(_arrays(["b", "new"], seed=3), removed_ids=np.array(["c", "zz"]))
    removing.write(2, v2, offsets={}, newest_event_ts=None, parent_version=1, scoring=SCORING)
    templates["delta-removing"] = scratch / "delta-removing"
    other = _store(scratch / "other-dim")  # a delta of dim 5, then moved beside a v1 of dim 4
    other.write(1, _arrays(list("abcdef"), seed=1, dim=5), offsets={}, newest_event_ts=None)
    other.write(2, _arrays(["b", "z"], seed=4, dim=5), offsets={}, newest_event_ts=None, parent_version=1)
    shutil.copytree(templates["delta"], scratch / "delta-other-dim")
    shutil.rmtree(scratch / "delta-other-dim" / folder_name(2))
    shutil.copytree(scratch / "other-dim" / folder_name(2), scratch / "delta-other-dim" / folder_name(2))
    templates["delta-other-dim"] = scratch / "delta-other-dim"
    served = _store(scratch / "served")
    served.write(1, _arrays(list("abcdef"), seed=1), offsets={}, newest_event_ts=None, scoring=SCORING)
    holder = IndexHolder(API)
    assert SnapshotWatcher(served, holder, INDEX, poll_s=1.0).poll_once()
    return scratch, templates, holder.state


def _copy(world, kind: str):
    scratch, templates, _ = world
    root = scratch / f"case-{next(_NEXT)}"
    shutil.copytree(templates[kind], root)
    return root, root / folder_name(2)


def _manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_bytes())


def _write_manifest(folder, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _replace_array(folder, name: str, data: bytes, fix_checksum: bool) -> None:
    (folder / f"{name}.npy").write_bytes(data)
    if fix_checksum:
        manifest = _manifest(folder)
        manifest["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
        _write_manifest(folder, manifest)


def _npy(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, arr, allow_pickle=False)
    return out.getvalue()


def _watch(world, root):
    """(swapped, holder, refusals): a fresh holder serving v1 lets a watcher try the damaged store."""
    registry = new_registry()
    holder = IndexHolder(API, ApiMetrics(registry))
    holder.swap(world[2])
    swapped = SnapshotWatcher(_store(root), holder, INDEX, poll_s=1.0).poll_once()
    refused = registry.get_sample_value("recsim_snapshot_loads_refused_total", {"reason": "corrupt"}) or 0
    return swapped, holder, refused


def _assert_refused_and_v1_still_served(world, root, match: str | None = None) -> None:
    with pytest.raises(SnapshotError, match=match):
        _store(root).load(2)
    swapped, holder, refused = _watch(world, root)
    assert (swapped, refused) == (False, 1.0)
    assert holder.state is world[2]
    assert holder.recommend(["a"], 3)[0] == 1


def _assert_refused_or_served_whole(world, root) -> None:
    """For damage that may still be a valid snapshot: refused as above, or served with finite answers."""
    try:
        _store(root).load(2)
    except SnapshotError:
        _assert_refused_and_v1_still_served(world, root)
        return
    swapped, holder, _ = _watch(world, root)
    assert swapped and holder.state.version == 2
    for item_id in holder.state.positions:
        for _, score in holder.recommend([item_id], 5)[1] + holder.similar(item_id, 5)[1]:
            assert math.isfinite(score)


kinds = st.sampled_from(["full", "delta"])
array_names = st.sampled_from(ARRAYS)


@HYPOTHESIS
@given(kinds, array_names, st.data(), st.booleans())
def test_a_truncated_array_is_refused(world, kind, name, data, fix_checksum):
    root, folder = _copy(world, kind)
    raw = (folder / f"{name}.npy").read_bytes()
    _replace_array(folder, name, raw[: data.draw(st.integers(0, len(raw) - 1))], fix_checksum)
    _assert_refused_and_v1_still_served(world, root)


@HYPOTHESIS
@given(kinds, array_names, st.data())
def test_a_flipped_byte_is_refused_by_its_checksum(world, kind, name, data):
    root, folder = _copy(world, kind)
    raw = bytearray((folder / f"{name}.npy").read_bytes())
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    _replace_array(folder, name, bytes(raw), fix_checksum=False)
    _assert_refused_and_v1_still_served(world, root, match="expected sha256")


@HYPOTHESIS
@given(kinds, array_names, st.data())
def test_a_flipped_byte_behind_a_matching_checksum_is_refused_or_served_whole(world, kind, name, data):
    root, folder = _copy(world, kind)
    raw = bytearray((folder / f"{name}.npy").read_bytes())
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    _replace_array(folder, name, bytes(raw), fix_checksum=True)
    _assert_refused_or_served_whole(world, root)


@HYPOTHESIS
@given(
    kinds,
    array_names,
    st.sampled_from(["dtype", "shape"]),
    st.sampled_from(["<f8", "<U1", "|b1", "<i4", "object", "", 7, None])
    | st.lists(st.integers(-2, 10**12), max_size=3),
)
def test_a_manifest_naming_the_wrong_dtype_or_shape_is_refused(world, kind, name, field, value):
    root, folder = _copy(world, kind)
    manifest = _manifest(folder)
    assume(manifest["files"][name][field] != value)
    manifest["files"][name][field] = value
    _write_manifest(folder, manifest)
    _assert_refused_and_v1_still_served(world, root, match="manifest says")


@HYPOTHESIS
@given(
    kinds,
    st.sampled_from(["count", "dim"]),
    st.integers(-3, 10**9) | st.sampled_from(["four", None, [4], {"n": 4}]),
)
def test_a_manifest_naming_the_wrong_count_or_dim_is_refused(world, kind, field, value):
    root, folder = _copy(world, kind)
    manifest = _manifest(folder)
    assume(manifest[field] != value)
    manifest[field] = value
    _write_manifest(folder, manifest)
    _assert_refused_and_v1_still_served(world, root)


@HYPOTHESIS
@given(
    kinds,
    array_names,
    st.sampled_from(
        ["../v000000000001/ids.npy", "../../../../etc/passwd", "/etc/passwd", "sub/ids.npy", "..", ".", ""]
    ),
)
def test_a_manifest_naming_a_file_outside_its_folder_is_refused(world, kind, name, file):
    root, folder = _copy(world, kind)
    manifest = _manifest(folder)
    manifest["files"][name]["file"] = file
    _write_manifest(folder, manifest)
    _assert_refused_and_v1_still_served(world, root, match="outside the folder")


@HYPOTHESIS
@given(kinds, st.sampled_from([*ARRAYS, "manifest", "folder", "v1"]))
def test_a_missing_file_is_refused(world, kind, name):
    root, folder = _copy(world, kind)
    assume(not (kind == "full" and name == "v1"))  # a full v2 does not need v1
    if name == "folder":
        shutil.rmtree(folder)
    elif name == "v1":
        shutil.rmtree(root / folder_name(1))
    else:
        (folder / (MANIFEST if name == "manifest" else f"{name}.npy")).unlink()
    _assert_refused_and_v1_still_served(world, root)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@HYPOTHESIS
@given(kinds, json_values | st.binary(max_size=50), st.data())
def test_a_manifest_that_is_not_a_manifest_is_refused(world, kind, junk, data):
    root, folder = _copy(world, kind)
    if isinstance(junk, bytes):
        (folder / MANIFEST).write_bytes(junk)
    else:  # a real manifest with one field replaced by junk
        manifest = _manifest(folder)
        key = data.draw(st.sampled_from(sorted(manifest)))
        assume(key not in ("created_at", "newest_event_ts", "offsets") or junk != manifest[key])
        manifest[key] = junk
        assume(key not in ("scoring",) or junk is not None)
        _write_manifest(folder, manifest)
    _assert_refused_or_served_whole(world, root)


@HYPOTHESIS
@given(
    kinds,
    st.sampled_from(["created_at", "newest_event_ts", "new_item_share", "cold_temperature"]),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
def test_a_manifest_with_a_number_no_answer_could_carry_is_refused(world, kind, field, value):
    root, folder = _copy(world, kind)
    manifest = _manifest(folder)
    (manifest["scoring"] if field in SCORING else manifest)[field] = value
    _write_manifest(folder, manifest)
    _assert_refused_and_v1_still_served(world, root, match="expected a finite")


@HYPOTHESIS
@given(kinds, st.floats(max_value=1e-7, allow_nan=False, allow_infinity=False) | st.just(1e-310))
def test_a_cold_temperature_too_small_to_score_with_is_refused_by_the_query_side(world, kind, temperature):
    root, folder = _copy(world, kind)
    manifest = _manifest(folder)
    manifest["scoring"]["cold_temperature"] = temperature
    _write_manifest(folder, manifest)
    swapped, holder, refused = _watch(world, root)
    assert (swapped, refused, holder.state is world[2]) == (False, 1.0, True)


@HYPOTHESIS
@given(
    kinds,
    st.sampled_from(["input_vectors", "output_vectors", "content_vectors"]),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e13, -3e38]),
    st.data(),
)
def test_vectors_whose_scores_could_not_be_finite_are_refused(world, kind, name, value, data):
    root, folder = _copy(world, kind)
    arr = np.load(folder / f"{name}.npy")
    arr[data.draw(st.integers(0, arr.shape[0] - 1)), data.draw(st.integers(0, arr.shape[1] - 1))] = value
    _replace_array(folder, name, _npy(arr), fix_checksum=True)
    _assert_refused_and_v1_still_served(world, root, match=f"{name}: expected finite floats")


@HYPOTHESIS
@given(kinds, st.integers(-(2**63), -1), st.data())
def test_a_negative_count_is_refused(world, kind, count, data):
    root, folder = _copy(world, kind)
    counts = np.load(folder / "counts.npy")
    counts[data.draw(st.integers(0, len(counts) - 1))] = count
    _replace_array(folder, "counts", _npy(counts), fix_checksum=True)
    _assert_refused_and_v1_still_served(world, root, match="counts: expected counts >= 0")


@HYPOTHESIS
@given(kinds, st.integers(0x110000, 2**32 - 1) | st.integers(0xD800, 0xDFFF), st.data())
def test_ids_that_are_not_unicode_text_are_refused(world, kind, code, data):
    root, folder = _copy(world, kind)
    ids = np.load(folder / "ids.npy")
    codes = ids.view(np.uint32).copy().reshape(len(ids), -1)
    codes[data.draw(st.integers(0, len(ids) - 1)), 0] = code
    _replace_array(folder, "ids", _npy(codes.reshape(-1).view(ids.dtype)), fix_checksum=True)
    _assert_refused_and_v1_still_served(world, root, match="ids: expected unicode text")


@HYPOTHESIS
@given(st.integers(10**9, 10**15), st.sampled_from(["<f4", "<U8", "<i8"]))
def test_an_npy_header_claiming_a_huge_array_is_refused_before_allocating_it(world, rows, dtype):
    root, folder = _copy(world, "full")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": (rows,)})
    _replace_array(folder, "counts", header.getvalue() + b"\x00" * 16, fix_checksum=True)
    manifest = _manifest(folder)
    manifest["files"]["counts"].update(dtype=str(np.dtype(dtype)), shape=[rows])
    _write_manifest(folder, manifest)
    _assert_refused_and_v1_still_served(world, root, match="bytes of")


@HYPOTHESIS
@given(
    st.sampled_from(["ids", "counts", "cold"]),
    st.sampled_from([b"(", b"{'descr': '<f4'", b"\x00" * 5, b"[1, 2"]),
)
def test_an_npy_header_that_does_not_parse_is_refused(world, name, header):
    root, folder = _copy(world, "full")
    prefix = b"\x93NUMPY\x01\x00" + len(header + b"\n").to_bytes(2, "little")
    _replace_array(folder, name, prefix + header + b"\n" + b"\x00" * 8, fix_checksum=True)
    _assert_refused_and_v1_still_served(world, root, match="not a valid .npy file")


def test_a_delta_of_another_dim_than_its_base_is_refused(world):
    root, _ = _copy(world, "delta-other-dim")
    _assert_refused_and_v1_still_served(world, root, match="expected dim 4 like its base, got 5")


def _replace_removed_ids(folder, removed: np.ndarray) -> None:
    """``removed_ids.npy`` replaced, its manifest entry (checksum, dtype, shape) made to match."""
    _replace_array(folder, "removed_ids", _npy(removed), fix_checksum=True)
    manifest = _manifest(folder)
    manifest["files"]["removed_ids"].update(dtype=str(removed.dtype), shape=list(removed.shape))
    _write_manifest(folder, manifest)


@HYPOTHESIS
@given(
    st.sampled_from(
        [np.arange(3), np.array([[b"c"]]), np.array([["c", "d"]]), np.array([1.5]), np.array([True])]
    )
    | st.integers(0x110000, 2**32 - 1).map(lambda code: np.array([code], np.uint32).view("<U1"))
)
def test_removed_ids_that_are_not_a_list_of_text_are_refused(world, removed):
    root, folder = _copy(world, "delta-removing")
    _replace_removed_ids(folder, removed)
    _assert_refused_and_v1_still_served(world, root, match="removed_ids")


@HYPOTHESIS
@given(
    st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "new", "zz", "ü/é 😀"]), max_size=9, unique=True)
)
def test_a_delta_removing_any_ids_even_its_own_is_served_as_loaded(world, removed):
    """Whatever ids a delta removes (all of them, none, ids it also writes, ids never served), the
    API serves what ``SnapshotStore.load`` gives, with finite answers; a row wins over a removal."""
    root, folder = _copy(world, "delta-removing")
    _replace_removed_ids(folder, np.array(removed, dtype="U8").reshape(-1))
    loaded = set(_store(root).load(2).arrays.ids.tolist())
    assert loaded == (set("abcdef") - set(removed)) | {"b", "new"}
    swapped, holder, _ = _watch(world, root)
    assert swapped and holder.state.version == 2
    assert set(holder.state.positions) == loaded
    assert holder.state.item_count == len(loaded)
    for item_id in loaded:
        for _, score in holder.recommend([item_id], 5)[1] + holder.similar(item_id, 5)[1]:
            assert math.isfinite(score)
