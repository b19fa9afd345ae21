"""Fuzz the snapshot loader and the query side's watcher with a hostile snapshot folder.

A store holds a good full snapshot v1, already served. Each input is a fuzzed v2 folder, cut into
sections at ``SEP``: flags, the ``LATEST`` pointer, ``manifest.json``, then the bytes of ``ids.npy``,
``input_vectors.npy``, ``output_vectors.npy``, ``counts.npy``, ``cold.npy``, ``content_vectors.npy``,
``removed_ids.npy``, then a shipped FAISS index's ``index_similar.npy`` and ``index_recommend.npy``
(bytes FAISS parses in C++; a missing section is a missing file). So that the fuzzer gets past the checksums, flag bit 0 makes
the harness write each file's real sha256 into the manifest, bit 1 each file's real dtype and shape
(from its .npy header), bit 2 the count and dim of ids / input_vectors.

Invariant: ``SnapshotWatcher.poll_once`` never raises; when it refuses v2 the holder still serves v1
(the very same state); when it swaps v2 in, every query on it answers or raises UnknownItem, with
finite scores and ids of the snapshot, and an id a delta removes (and does not write) is not served.
``SnapshotStore.load(2)`` returns or raises SnapshotError.

    .venv/bin/python fuzz/fuzz_snapshot.py var/fuzz/snapshot/corpus fuzz/seeds/snapshot -max_total_time=60
    .venv/bin/python fuzz/fuzz_snapshot.py --write-seeds fuzz/seeds/snapshot    # regenerate the seeds
"""

import dataclasses
import hashlib
import io
import json
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["recsim_stream"]):
    from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
    from recsim_stream.index import build_main_indexes, ship
    from recsim_stream.query import IndexHolder, SnapshotWatcher, UnknownItem
    from recsim_stream.snapshot import (
        LATEST,
        MANIFEST,
        SnapshotArrays,
        SnapshotError,
        SnapshotStore,
        folder_name,
    )

SEP = b"\n\x00--8<--\x00\n"
ARRAYS = ("ids", "input_vectors", "output_vectors", "counts", "cold", "content_vectors", "removed_ids")
FILES = (*ARRAYS, "index_similar", "index_recommend")  # the sections after the manifest, in order
# A small HNSW index for the seeds that ship one (the snapshotter ships one above exact_below rows).
SHIPPED = IndexConfig(exact_below=0, hnsw_m=4, recall_gate=0.0, recall_sample=8)
API = ApiConfig(max_k=50)
INDEX = IndexConfig(recall_sample=8)
SCORING = {"new_item_share": 0.2, "cold_temperature": 0.1}
logging.disable(logging.WARNING)  # the watcher logs every refusal; the invariants below are what count


def arrays(ids: list[str], seed: int, dim: int = 4, width: int = 3) -> SnapshotArrays:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return SnapshotArrays(
        ids=np.array(ids, dtype="U"),
        input_vectors=rng.normal(size=(n, dim)).astype(np.float32),
        output_vectors=rng.normal(size=(n, dim)).astype(np.float32),
        counts=np.arange(n, dtype=np.int64),
        cold=np.array([j % 3 == 0 for j in range(n)], dtype=bool),
        content_vectors=rng.normal(size=(n, width)).astype(np.float32),
    )


def _npy_header(raw: bytes) -> tuple[str, list[int]] | None:
    try:
        handle = io.BytesIO(raw)
        major, _ = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
        return str(dtype), list(shape)
    except Exception:  # the harness only helps the fuzzer; the loader must refuse such files itself
        return None


def _fix_manifest(raw: bytes, folder: Path, flags: int) -> bytes:
    """The manifest with what flags ask for made consistent with the files, when it is a JSON map."""
    try:
        manifest = json.loads(raw)
    except ValueError:
        return raw
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return raw
    headers = {}
    for name, info in files.items():
        if not isinstance(info, dict) or not isinstance(info.get("file"), str):
            continue
        path = folder / info["file"]
        if path.parent != folder or not path.is_file():
            continue
        data = path.read_bytes()
        if flags & 1:
            info["sha256"] = hashlib.sha256(data).hexdigest()
        headers[name] = _npy_header(data)
        if flags & 2 and headers[name] is not None:
            info["dtype"], info["shape"] = headers[name]
    if flags & 4:
        for key, name, axis in (("count", "ids", 0), ("dim", "input_vectors", 1)):
            header = headers.get(name)
            if header is not None and len(header[1]) > axis:
                manifest[key] = header[1][axis]
    return json.dumps(manifest).encode()


def write_input(root: Path, data: bytes) -> None:
    """Lay the sections of ``data`` out as folder v2 and the LATEST pointer of ``root``."""
    sections = data.split(SEP)
    flags = sections[0][0] if sections[0] else 0
    folder = root / folder_name(2)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, content in zip(FILES, sections[3:], strict=False):
        (folder / f"{name}.npy").write_bytes(content)
    if len(sections) > 2:
        (folder / MANIFEST).write_bytes(_fix_manifest(sections[2], folder, flags))
    (root / LATEST).write_bytes(sections[1] if len(sections) > 1 else b"2\n")


def seed_inputs(scratch: Path) -> dict[str, bytes]:
    """Well-formed v2 folders (full, delta on v1, with and without content vectors, a full one with
    a shipped index), packed."""
    seeds = {}
    shipped = arrays([f"s{k}" for k in range(40)], seed=7)
    index = ship(build_main_indexes(shipped.input_vectors, shipped.output_vectors, shipped.counts, SHIPPED))
    cases = {
        "full": dict(values=arrays(["a", "b", "ü/é 😀", "x" * 40], seed=2), parent=None),
        "delta": dict(values=arrays(["b", "new"], seed=3), parent=1),
        "full-no-content": dict(
            values=SnapshotArrays(*(getattr(arrays(["p", "q", "r"], 4), n) for n in ARRAYS[:5])), parent=None
        ),
        "delta-empty": dict(values=arrays([], seed=5), parent=1),
        "delta-removing": dict(
            values=dataclasses.replace(arrays(["b", "new"], seed=6), removed_ids=np.array(["c", "gone"])),
            parent=1,
        ),
        "full-shipped-index": dict(values=shipped, parent=None, index=index),
    }
    for name, case in cases.items():
        root = scratch / name
        store = SnapshotStore(SnapshotConfig(dir=str(root), keep=10))
        store.write(1, arrays(list("abcdef"), seed=1), offsets={}, newest_event_ts=None, scoring=SCORING)
        store.write(
            2,
            case["values"],
            offsets={"events": {0: 5}},
            newest_event_ts=10.0,
            parent_version=case["parent"],
            scoring=SCORING,
            index=case.get("index"),
        )
        folder = root / folder_name(2)
        files = [(folder / f"{n}.npy").read_bytes() if (folder / f"{n}.npy").exists() else b"" for n in FILES]
        while files and not files[-1]:  # a missing file at the end is a missing section
            files.pop()
        for flags in (0, 7):
            seeds[f"{name}-flags{flags}"] = SEP.join(
                [bytes([flags]), b"2\n", (folder / MANIFEST).read_bytes(), *files]
            )
    return seeds


class Target:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="recsim-fuzz-snapshot-"))
        self.store = SnapshotStore(SnapshotConfig(dir=str(self.root), keep=10))
        self.store.write(1, arrays(list("abcdef"), seed=1), offsets={}, newest_event_ts=None, scoring=SCORING)
        holder = IndexHolder(API)
        assert SnapshotWatcher(self.store, holder, INDEX, poll_s=1.0).poll_once()
        self.good = holder.state

    def __call__(self, data: bytes) -> None:
        write_input(self.root, data)
        try:
            self.store.load(2)
        except SnapshotError:
            pass
        holder = IndexHolder(API)
        holder.swap(self.good)
        swapped = SnapshotWatcher(self.store, holder, INDEX, poll_s=1.0).poll_once()
        if not swapped:
            assert holder.state is self.good, "a refused snapshot replaced the served one"
            return
        state = holder.state
        assert state.version == 2, state.version
        delta = self.store.read(2).arrays  # it was served, so it reads
        if delta.removed_ids is not None:
            removed = set(delta.removed_ids.tolist()) - set(delta.ids.tolist())
            assert not any(i in state.positions for i in removed), "a removed id is still served"
        json.dumps(holder.snapshot_info(), allow_nan=False)  # what /snapshot answers
        ids = [state.item_id(p) for p in range(min(state.item_count, 8))]
        for item_id in ids + ["not-there"]:
            try:
                _, row = holder.item(item_id)
                answers = [holder.similar(item_id, 5)[1], holder.recommend([item_id], 5, ["a"])[1]]
            except UnknownItem:
                continue
            assert all(math.isfinite(v) for v in row["vector"]), row
            for results in answers:
                for found, score in results:
                    assert math.isfinite(score), (item_id, results)
                    assert found in state.positions, (item_id, results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-seeds"]:
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            for name, seed in seed_inputs(Path(scratch)).items():
                (out / name).write_bytes(seed)
        sys.exit(0)
    atheris.Setup(sys.argv, Target())
    atheris.Fuzz()
