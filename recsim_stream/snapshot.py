"""Snapshots of the embedding tables on disk: format, atomic publish, verified load, retention.

A snapshot is a folder ``<dir>/v<version:012d>/`` holding ``manifest.json`` and one ``.npy`` file per
array. It is written to a hidden temporary folder in the same directory, fsynced, and renamed into
place, so a reader sees either the whole folder or none of it; the ``LATEST`` pointer file is then
replaced atomically. Loading verifies each file's sha256, dtype and shape against the manifest and
never unpickles, so a corrupt, truncated or mismatched snapshot raises ``SnapshotError`` and the
caller keeps serving the previous one.

A *full* snapshot holds every row; a *delta* holds only the rows changed since its parent (the
previous snapshot) and names its base (the full snapshot its chain starts from). Serving applies
base + deltas in order, newer rows winning. A delta may also name ids it removes (items deleted from
the catalogue): their rows in earlier snapshots stop being served. Expired rows are not removed
that way: they disappear at the next full snapshot. A full snapshot may also ship the serialised search indexes built over its rows
(``index_<name>.npy`` byte arrays, described by the manifest's ``index`` entry), so that no reader has
to build them. This module does no indexing (no FAISS) and reads no configuration but its own.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from recsim_stream.config import SnapshotConfig
from recsim_stream.durable import fsync_dir, read_npy, write_durably, write_npy

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "LATEST"
_FOLDER = re.compile(r"^v(\d{12})$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
KIND_FULL = "full"
KIND_DELTA = "delta"
INDEX_PREFIX = "index_"  # files of a shipped index: index_<name>.npy


class SnapshotError(Exception):
    """A snapshot is missing, partial, corrupt or inconsistent; the message says which and where."""


@dataclass(frozen=True)
class SnapshotArrays:
    """The rows of one snapshot. Row ``i`` of every array belongs to ``ids[i]``."""

    ids: np.ndarray  # (n,) fixed-width unicode, unique, non-empty
    input_vectors: np.ndarray  # (n, dim) float32: the item's own (centre) vectors
    output_vectors: np.ndarray  # (n, dim) float32: the item's context vectors
    counts: np.ndarray  # (n,) int64 interactions seen
    cold: np.ndarray  # (n,) bool: the vector still comes mostly from the content tower
    # Optional (n, width) float32 unit content vectors (cold_start.py), a zero row where an item has no
    # metadata: the query API scores cold items content-to-content with them. Absent in snapshots of
    # an updater without a content tower, and in those written before it existed.
    content_vectors: np.ndarray | None = None
    # Optional, deltas only: (r,) fixed-width unicode ids whose rows in earlier snapshots of the chain
    # are no longer served (deleted from the catalogue), none of them among ``ids``.
    removed_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.ids.shape[0] if self.ids.ndim == 1 else -1
        dim = self.input_vectors.shape[-1]
        expected = {
            "ids": ("1-d fixed-width unicode", self.ids.dtype.kind == "U" and self.ids.ndim == 1),
            "input_vectors": (f"float32 ({n}, dim)", self._is(self.input_vectors, np.float32, (n, dim))),
            "output_vectors": (f"float32 ({n}, {dim})", self._is(self.output_vectors, np.float32, (n, dim))),
            "counts": (f"int64 ({n},)", self._is(self.counts, np.int64, (n,))),
            "cold": (f"bool ({n},)", self._is(self.cold, np.bool_, (n,))),
        }
        content = self.content_vectors
        if content is not None:
            expected["content_vectors"] = (
                f"float32 ({n}, width)",
                content.dtype == np.float32 and content.ndim == 2 and content.shape[0] == n,
            )
        removed = self.removed_ids
        if removed is not None:
            expected["removed_ids"] = (
                "1-d fixed-width unicode",
                removed.dtype.kind == "U" and removed.ndim == 1,
            )
        for name, (description, ok) in expected.items():
            if not ok:
                arr = getattr(self, name)
                raise SnapshotError(f"{name}: expected {description}, got {arr.dtype} of shape {arr.shape}")

    @staticmethod
    def _is(arr: np.ndarray, dtype: type, shape: tuple[int, ...]) -> bool:
        return arr.dtype == dtype and arr.shape == shape

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.input_vectors.shape[1])

    @property
    def removed_count(self) -> int:
        return 0 if self.removed_ids is None else int(self.removed_ids.shape[0])

    @property
    def changes(self) -> int:
        """Rows written plus ids removed: what a delta changes for its readers."""
        return self.count + self.removed_count

    def validate_content(self) -> None:
        """Checks too costly for every load (the checksum covers reloads): unique, non-empty ids, finite vectors."""
        if self.count and int(np.char.str_len(self.ids).min()) == 0:
            raise SnapshotError("ids: expected non-empty item ids, got an empty string")
        if np.unique(self.ids).shape[0] != self.count:
            raise SnapshotError(f"ids: expected {self.count} distinct ids, got duplicates")
        if self.removed_count and np.isin(self.removed_ids, self.ids).any():
            raise SnapshotError("removed_ids: expected ids a delta removes, got ids it also writes")
        for name in ("input_vectors", "output_vectors", "content_vectors"):
            arr = getattr(self, name)
            if arr is not None and not np.isfinite(arr).all():
                raise SnapshotError(f"{name}: expected finite floats, got NaN or inf")


# Bound on a vector component: any dot product of two rows (any dim below 1e14) stays finite in float32.
MAX_ABS_COMPONENT = 1e12


def _check_servable(arrays: SnapshotArrays, where: Path) -> None:
    """Refuse what would fail every answer naming it, even when the checksums match (a buggy or hostile
    writer): ids that are not unicode text, vectors that are not finite or whose scores would overflow,
    negative counts. Linear, no copy of the vectors: ~0.06 s at 1M rows x 64."""
    for name in ("ids", "removed_ids"):
        ids = getattr(arrays, name)
        if ids is None or not ids.dtype.itemsize:
            continue
        codes = ids.astype(ids.dtype.newbyteorder("="), copy=False).view(np.uint32)
        if codes.size and (
            int(codes.max()) > 0x10FFFF or bool(((codes >= 0xD800) & (codes <= 0xDFFF)).any())
        ):
            raise SnapshotError(
                f"{where}: {name}: expected unicode text, got code points that are not characters"
            )
    for name in ("input_vectors", "output_vectors", "content_vectors"):
        arr = getattr(arrays, name)
        low, high = (float(arr.min()), float(arr.max())) if arr is not None and arr.size else (0.0, 0.0)
        if not -MAX_ABS_COMPONENT <= low <= high <= MAX_ABS_COMPONENT:  # NaN fails every comparison
            raise SnapshotError(
                f"{where}: {name}: expected finite floats within +-{MAX_ABS_COMPONENT:g}, got [{low}, {high}]"
            )
    if arrays.count and int(arrays.counts.min()) < 0:
        raise SnapshotError(f"{where}: counts: expected counts >= 0, got {int(arrays.counts.min())}")


_ARRAY_NAMES = ("ids", "input_vectors", "output_vectors", "counts", "cold")
_OPTIONAL_ARRAYS = ("content_vectors", "removed_ids")


def _present_arrays(arrays: SnapshotArrays) -> tuple[str, ...]:
    return _ARRAY_NAMES + tuple(n for n in _OPTIONAL_ARRAYS if getattr(arrays, n) is not None)


@dataclass(frozen=True)
class SnapshotManifest:
    version: int
    kind: str  # "full" | "delta"
    base_version: int  # the full snapshot this chain starts from (itself for a full one)
    parent_version: int | None  # the snapshot a delta applies on top of; None for a full one
    dim: int
    count: int  # rows in this folder (only the changed rows for a delta)
    offsets: Mapping[str, Mapping[int, int]]  # Kafka offsets covered: {topic: {partition: next offset}}
    newest_event_ts: float | None  # event time of the newest event whose effect is included
    created_at: float  # wall time of the write
    files: Mapping[str, Mapping[str, object]] = field(
        default_factory=dict
    )  # name -> file, sha256, dtype, shape
    format_version: int = FORMAT_VERSION
    # Optional scoring constants the query API applies (e.g. new_item_share, cold_temperature);
    # None in snapshots without a cold-start component.
    scoring: Mapping[str, float] | None = None
    # How the shipped index files were built and gated (JSON, index.py); None when none is shipped.
    index: Mapping[str, object] | None = None
    # Wall time the newest covered Kafka record was produced (its record timestamp); freshness is
    # measured from it, because event time may run ahead of or behind the wall clock.
    newest_record_ts: float | None = None

    def to_json(self) -> dict:
        raw = {
            "format_version": self.format_version,
            "version": self.version,
            "kind": self.kind,
            "base_version": self.base_version,
            "parent_version": self.parent_version,
            "dim": self.dim,
            "count": self.count,
            "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in self.offsets.items()},
            "newest_event_ts": self.newest_event_ts,
            "created_at": self.created_at,
            "files": {name: dict(info) for name, info in self.files.items()},
        }
        if self.scoring is not None:
            raw["scoring"] = dict(self.scoring)
        if self.index is not None:
            raw["index"] = dict(self.index)
        if self.newest_record_ts is not None:
            raw["newest_record_ts"] = self.newest_record_ts
        return raw

    @classmethod
    def from_json(cls, raw: object, where: str) -> SnapshotManifest:
        try:
            if raw["format_version"] != FORMAT_VERSION:
                raise SnapshotError(
                    f"{where}: expected format_version {FORMAT_VERSION}, got {raw['format_version']!r}"
                )
            manifest = cls(
                version=int(raw["version"]),
                kind=str(raw["kind"]),
                base_version=int(raw["base_version"]),
                parent_version=None if raw["parent_version"] is None else int(raw["parent_version"]),
                dim=int(raw["dim"]),
                count=int(raw["count"]),
                offsets={
                    str(t): {int(p): int(o) for p, o in parts.items()} for t, parts in raw["offsets"].items()
                },
                newest_event_ts=None if raw["newest_event_ts"] is None else float(raw["newest_event_ts"]),
                created_at=float(raw["created_at"]),
                files={str(n): dict(info) for n, info in raw["files"].items()},
                scoring=None
                if raw.get("scoring") is None
                else {str(k): float(v) for k, v in raw["scoring"].items()},
                index=None if raw.get("index") is None else dict(raw["index"]),
                newest_record_ts=None
                if raw.get("newest_record_ts") is None
                else float(raw["newest_record_ts"]),
            )
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SnapshotError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from exc
        if manifest.kind not in (KIND_FULL, KIND_DELTA):
            raise SnapshotError(f"{where}: expected kind full or delta, got {manifest.kind!r}")
        # JSON admits NaN and Infinity; served numbers must be finite (JSON responses refuse them).
        numbers = {
            "created_at": manifest.created_at,
            "newest_event_ts": manifest.newest_event_ts,
            "newest_record_ts": manifest.newest_record_ts,
        }
        numbers.update({f"scoring.{k}": v for k, v in (manifest.scoring or {}).items()})
        for name, value in numbers.items():
            if value is not None and not math.isfinite(value):
                raise SnapshotError(f"{where}: expected a finite {name}, got {value}")
        if (manifest.kind == KIND_DELTA) != (manifest.parent_version is not None):
            raise SnapshotError(
                f"{where}: a delta needs a parent_version and a full snapshot must not have one"
            )
        index_files = {n for n in manifest.files if n.startswith(INDEX_PREFIX)}
        if set(manifest.files) - set(_OPTIONAL_ARRAYS) - index_files != set(_ARRAY_NAMES):
            raise SnapshotError(
                f"{where}: expected files {sorted(_ARRAY_NAMES)} (and optionally {list(_OPTIONAL_ARRAYS)} "
                f"and {INDEX_PREFIX}* files), got {sorted(manifest.files)}"
            )
        if "removed_ids" in manifest.files and manifest.kind != KIND_DELTA:
            raise SnapshotError(f"{where}: removed_ids belong to a delta")
        if index_files and (manifest.index is None or manifest.kind != KIND_FULL):
            raise SnapshotError(f"{where}: index files belong to a full snapshot with an index entry")
        return manifest


@dataclass(frozen=True)
class Snapshot:
    manifest: SnapshotManifest
    arrays: SnapshotArrays


@dataclass(frozen=True)
class ShippedIndex:
    """Search indexes serialised by whoever built them over a full snapshot's rows (index.py)."""

    files: Mapping[str, np.ndarray]  # name -> 1-d uint8 bytes
    info: Mapping[str, object]  # JSON-serialisable: how they were built and gated


@dataclass(frozen=True)
class PreparedFiles:
    """A full snapshot's files written and fsynced in a hidden folder, not published yet."""

    folder: Path
    files: Mapping[str, dict]  # name -> checksum, dtype, shape (the manifest's entries)
    arrays: SnapshotArrays
    index_info: Mapping[str, object] | None


def folder_name(version: int) -> str:
    return f"v{version:012d}"


def apply_delta(base: SnapshotArrays, delta: SnapshotArrays) -> SnapshotArrays:
    """Rows of ``delta`` replace the rows of ``base`` with the same id; new ids are appended; the
    ids ``delta`` removes leave. The result removes what either removes and the other does not
    write (so two deltas merged into one remove what applying both in turn would)."""
    if delta.dim != base.dim:  # even without rows: the arrays could not be concatenated
        raise SnapshotError(f"delta: expected dim {base.dim} like its base, got {delta.dim}")
    keep = ~np.isin(base.ids, delta.ids)
    if delta.removed_count:
        keep &= ~np.isin(base.ids, delta.removed_ids)
    merged = {n: np.concatenate([getattr(base, n)[keep], getattr(delta, n)]) for n in _ARRAY_NAMES}
    if base.removed_count or delta.removed_count:
        older = base.removed_ids if base.removed_count else np.zeros(0, str)
        older = older[~np.isin(older, delta.ids)]
        merged["removed_ids"] = np.union1d(
            older, delta.removed_ids if delta.removed_count else np.zeros(0, str)
        )
    if base.content_vectors is not None or delta.content_vectors is not None:
        width = next(a.shape[1] for a in (base.content_vectors, delta.content_vectors) if a is not None)
        parts = []
        for arrays, rows in ((base, keep), (delta, slice(None))):
            content = arrays.content_vectors
            if content is None:
                content = np.zeros((arrays.count, width), np.float32)
            elif content.shape[1] != width:
                raise SnapshotError(
                    f"delta: expected content vectors of width {width}, got {content.shape[1]}"
                )
            parts.append(content[rows])
        merged["content_vectors"] = np.concatenate(parts)
    return SnapshotArrays(**merged)


class SnapshotStore:
    """One snapshot directory. Single writer (the snapshotter), any number of reader processes."""

    def __init__(self, config: SnapshotConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.root = Path(config.dir)
        self._clock = clock

    # -- reading ---------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """Published versions, oldest first (temporary and half-deleted folders are not listed)."""
        if not self.root.is_dir():
            return []
        found = (_FOLDER.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest_version(self) -> int | None:
        """The version ``LATEST`` names; the newest folder if there is no pointer yet; None if empty."""
        pointer = self.root / LATEST
        try:
            text = pointer.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            versions = self.versions()
            return versions[-1] if versions else None
        except (OSError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"{pointer}: unreadable pointer ({exc})") from exc
        if not text.isdigit():
            raise SnapshotError(f"{pointer}: expected a version number, got {text[:40]!r}")
        return int(text)

    def read_manifest(self, version: int) -> SnapshotManifest:
        path = self.root / folder_name(version) / MANIFEST
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise SnapshotError(f"{path}: snapshot {version} does not exist (or was pruned)") from exc
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"{path}: unreadable manifest ({exc})") from exc
        manifest = SnapshotManifest.from_json(raw, str(path))
        if manifest.version != version:
            raise SnapshotError(f"{path}: expected version {version}, got {manifest.version}")
        return manifest

    def read(self, version: int) -> Snapshot:
        """Load one folder, verifying every file against the manifest."""
        manifest = self.read_manifest(version)
        folder = self.root / folder_name(version)
        names = _ARRAY_NAMES + tuple(n for n in _OPTIONAL_ARRAYS if n in manifest.files)
        loaded = {name: self._read_array(folder, name, manifest) for name in names}
        arrays = SnapshotArrays(**loaded)
        if arrays.count != manifest.count or (arrays.count and arrays.dim != manifest.dim):
            raise SnapshotError(
                f"{folder}: manifest says {manifest.count} rows x {manifest.dim}, "
                f"arrays hold {arrays.count} x {arrays.input_vectors.shape[1]}"
            )
        _check_servable(arrays, folder)
        return Snapshot(manifest, arrays)

    def read_chain(self, version: int, after: int | None = None) -> list[Snapshot]:
        """The snapshots to apply, oldest first, to serve ``version``: its full base, then each delta.

        With ``after`` (a version already served from the same chain), only the snapshots newer than
        it; if ``after`` is not on the chain, the whole chain.
        """
        return [self.read(m.version) for m in self.read_manifests(version, after)]

    def read_manifests(self, version: int, after: int | None = None) -> list[SnapshotManifest]:
        """The manifests of ``read_chain(version, after)``, oldest first, without reading any array:
        a few small files, so a reader can decide what to load before loading it."""
        manifests = [self.read_manifest(version)]
        while manifests[-1].parent_version is not None:
            parent = manifests[-1].parent_version
            if parent == after:
                break
            if parent >= manifests[-1].version:
                raise SnapshotError(f"snapshot {manifests[-1].version}: parent {parent} is not older")
            manifests.append(self.read_manifest(parent))
        return manifests[::-1]

    def load(self, version: int) -> Snapshot:
        """``version`` with its chain applied: every row to serve, under ``version``'s manifest."""
        chain = self.read_chain(version)
        arrays = chain[0].arrays
        for delta in chain[1:]:
            arrays = apply_delta(arrays, delta.arrays)
        return Snapshot(chain[-1].manifest, replace(arrays, removed_ids=None))

    def read_index(self, version: int) -> ShippedIndex | None:
        """The index shipped with full snapshot ``version``, verified; None if it ships none."""
        manifest = self.read_manifest(version)
        if manifest.index is None:
            return None
        folder = self.root / folder_name(version)
        files = {
            name.removeprefix(INDEX_PREFIX): self._read_array(folder, name, manifest)
            for name in manifest.files
            if name.startswith(INDEX_PREFIX)
        }
        return ShippedIndex(files, manifest.index)

    def _read_array(self, folder: Path, name: str, manifest: SnapshotManifest) -> np.ndarray:
        return read_npy(folder, name, manifest.files[name], SnapshotError)

    # -- writing ---------------------------------------------------------------------------------
    def prepare(self, arrays: SnapshotArrays, index: ShippedIndex | None = None) -> PreparedFiles:
        """Write a full snapshot's arrays (and shipped index) durably into a hidden folder, without
        publishing anything: the slow part of ``write``, which a background thread can do while
        deltas go on being published; ``write(..., prepared=...)`` then adds the manifest and
        renames it into place. ``discard`` removes one that will not be published."""
        arrays.validate_content()
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f"{_TEMP_PREFIX}prepared-{secrets.token_hex(4)}"
        temp.mkdir()
        try:
            files = {name: write_npy(temp, name, getattr(arrays, name)) for name in _present_arrays(arrays)}
            for name, data in (index.files if index is not None else {}).items():
                files[INDEX_PREFIX + name] = write_npy(temp, INDEX_PREFIX + name, data)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return PreparedFiles(temp, files, arrays, None if index is None else dict(index.info))

    def discard(self, prepared: PreparedFiles) -> None:
        shutil.rmtree(prepared.folder, ignore_errors=True)

    def write(
        self,
        version: int,
        arrays: SnapshotArrays,
        *,
        offsets: Mapping[str, Mapping[int, int]],
        newest_event_ts: float | None,
        parent_version: int | None = None,
        scoring: Mapping[str, float] | None = None,
        index: ShippedIndex | None = None,
        newest_record_ts: float | None = None,
        make_latest: bool = True,
        prepared: PreparedFiles | None = None,
    ) -> SnapshotManifest:
        """Publish a full snapshot (``parent_version=None``) or a delta on ``parent_version``.

        Writes the folder atomically, points ``LATEST`` at it (unless ``make_latest`` is False: a
        full snapshot whose catch-up delta follows at once), then prunes old versions. ``scoring``
        (optional) is stored in the manifest for the query API; ``index`` (full snapshots only) is
        shipped beside the arrays. With ``prepared`` (a full snapshot's files, from ``prepare``; its
        arrays must be ``arrays``), only the manifest is written here.
        """
        try:
            base_version = self._check_publishable(version, arrays, parent_version, index, prepared)
        except BaseException:
            if prepared is not None:  # never publishable: its folder would linger until the next start
                self.discard(prepared)
            raise
        if prepared is None:
            prepared = self.prepare(arrays, index)
        temp = prepared.folder
        try:
            manifest = SnapshotManifest(
                version=version,
                kind=KIND_FULL if parent_version is None else KIND_DELTA,
                base_version=base_version,
                parent_version=parent_version,
                dim=arrays.dim,
                count=arrays.count,
                offsets=offsets,
                newest_event_ts=newest_event_ts,
                created_at=self._clock(),
                files=dict(prepared.files),
                scoring=None if scoring is None else dict(scoring),
                index=None if prepared.index_info is None else dict(prepared.index_info),
                newest_record_ts=newest_record_ts,
            )
            write_durably(temp / MANIFEST, json.dumps(manifest.to_json(), indent=1).encode())
            fsync_dir(temp)
            os.rename(temp, self.root / folder_name(version))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        fsync_dir(self.root)
        if make_latest:
            self._point_latest(version)
        self.prune()
        return manifest

    def _check_publishable(
        self,
        version: int,
        arrays: SnapshotArrays,
        parent_version: int | None,
        index: ShippedIndex | None,
        prepared: PreparedFiles | None,
    ) -> int:
        """The base version ``version`` would have; raises if it cannot be published as asked."""
        if (index is not None or prepared is not None) and parent_version is not None:
            raise SnapshotError(f"delta {version}: an index or prepared files belong to a full snapshot")
        if arrays.removed_ids is not None and parent_version is None:
            raise SnapshotError(
                f"snapshot {version}: removed ids belong to a delta, a full snapshot leaves rows out"
            )
        if prepared is not None and (index is not None or prepared.arrays is not arrays):
            raise SnapshotError(f"snapshot {version}: prepared files must hold these arrays and their index")
        latest = self.latest_version()
        if latest is not None and version <= latest:
            raise SnapshotError(f"snapshot {version}: expected a version above the latest, {latest}")
        base_version = version
        if parent_version is not None:
            parent = self.read_manifest(parent_version)
            if parent.dim != arrays.dim and arrays.count:
                raise SnapshotError(
                    f"delta {version}: expected dim {parent.dim} like parent, got {arrays.dim}"
                )
            base_version = parent.base_version
        return base_version

    def _point_latest(self, version: int) -> None:
        temp = self.root / f"{_TEMP_PREFIX}{LATEST}-{secrets.token_hex(4)}"
        write_durably(temp, f"{version}\n".encode("ascii"))
        os.replace(temp, self.root / LATEST)
        fsync_dir(self.root)

    def prune(self) -> list[int]:
        """Delete all but the newest ``keep`` versions, keeping every snapshot their chains need.

        A folder is first renamed to a hidden name (one atomic step), so readers never list it
        half-deleted; a reader that is mid-load of it gets a ``SnapshotError`` and tries again later.
        """
        versions = self.versions()
        keep = set(versions[-self.config.keep :])
        latest = self.latest_version()
        if latest is not None:
            keep.add(latest)
        for version in list(keep):
            keep.update(self._ancestors(version))
        removed = []
        for version in versions:
            if version in keep:
                continue
            trash = self.root / f"{_TRASH_PREFIX}{folder_name(version)}-{secrets.token_hex(4)}"
            os.rename(self.root / folder_name(version), trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(version)
        return removed

    def remove_stale_temp(self) -> None:
        """Clear folders a crashed writer left behind; call once when the (single) writer starts."""
        if self.root.is_dir():
            for path in self.root.iterdir():
                if not path.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _ancestors(self, version: int) -> list[int]:
        found = []
        try:
            parent = self.read_manifest(version).parent_version
            while parent is not None:
                found.append(parent)
                parent = self.read_manifest(parent).parent_version
        except SnapshotError:
            pass  # a broken chain serves nothing; keeping what exists of it is harmless
        return found
