"""Checkpoints: the updater's whole state at one consistent cut, with the Kafka offsets it covers.

A checkpoint is taken between two polls, after every push was applied (the shards' barrier), so the
state is exactly the effect of every record before its offsets. Restoring it and reading on from
those offsets gives the state an uninterrupted run would have had: each event takes effect once in
the surviving state, whatever happened after the checkpoint (see README, "Delivery guarantee").

On disk: ``<dir>/c<seq:012d>/`` with ``manifest.json`` (format, seq, offsets, creation time, and the
sha256, dtype and shape of every file), ``state.msgpack`` (the state tree) and one ``.npy`` per array
of the tree. The tree holds plain values (None, bool, int, float, str, lists, dicts) and numpy arrays;
msgpack stands an array in by an extension record naming its file. Written to a hidden temporary
folder, fsynced and renamed into place like a snapshot; nothing is ever unpickled. A checkpoint that
fails verification is skipped for the next older one, so a damaged newest checkpoint costs a longer
replay, not the state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

from recsim_stream.config import CheckpointConfig
from recsim_stream.durable import fsync_dir, read_npy, write_durably, write_npy

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE_FILE = "state.msgpack"
_FOLDER = re.compile(r"^c(\d{12})$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_ARRAY_EXT = 1  # msgpack extension code of an array reference; its data is the array's name

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to read


class CheckpointError(Exception):
    """A checkpoint is missing, partial, corrupt or inconsistent; the message says which and where."""


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    offsets: Offsets
    state: dict
    created_at: float


def pack_state(state: Mapping) -> tuple[bytes, dict[str, np.ndarray]]:
    """The tree as msgpack bytes, and its arrays by the names the bytes refer to them by."""
    arrays: dict[str, np.ndarray] = {}

    def default(value: object) -> object:
        if isinstance(value, np.ndarray):
            name = f"a{len(arrays)}"
            arrays[name] = value
            return msgpack.ExtType(_ARRAY_EXT, name.encode("ascii"))
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, tuple):
            return list(value)
        raise TypeError(f"checkpoint state: cannot store a {type(value).__name__}")

    return msgpack.packb(state, default=default, use_bin_type=True), arrays


def unpack_state(data: bytes, arrays: Mapping[str, np.ndarray], where: str) -> dict:
    """Inverse of ``pack_state``; anything malformed raises ``CheckpointError`` naming ``where``."""

    def ext_hook(code: int, payload: bytes) -> object:
        name = payload.decode("ascii", "replace")
        if code != _ARRAY_EXT or name not in arrays:
            raise CheckpointError(f"{where}: refers to an array {name!r} (ext {code}) the manifest lacks")
        return arrays[name]

    try:
        state = msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
    except CheckpointError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for malformed bytes
        raise CheckpointError(f"{where}: malformed state ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: expected a map at the top of the state, got {type(state).__name__}")
    return state


def folder_name(seq: int) -> str:
    return f"c{seq:012d}"


class CheckpointStore:
    """One checkpoint directory, written by one updater."""

    def __init__(self, config: CheckpointConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.root = Path(config.dir)
        self._clock = clock

    def seqs(self) -> list[int]:
        """Complete checkpoints, oldest first (temporary and half-deleted folders are not listed)."""
        if not self.root.is_dir():
            return []
        found = (_FOLDER.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def write(self, offsets: Mapping[tuple[str, int], int], state: Mapping) -> int:
        """Write a new checkpoint atomically, then prune; returns its seq. On any error (a full disk)
        the temporary folder is removed and the previous checkpoints are untouched."""
        seqs = self.seqs()
        seq = (seqs[-1] if seqs else 0) + 1
        data, arrays = pack_state(state)
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f"{_TEMP_PREFIX}{folder_name(seq)}-{secrets.token_hex(4)}"
        temp.mkdir()
        try:
            files = {name: write_npy(temp, name, arr) for name, arr in arrays.items()}
            write_durably(temp / STATE_FILE, data)
            manifest = {
                "format_version": FORMAT_VERSION,
                "seq": seq,
                "created_at": self._clock(),
                "offsets": _offsets_to_json(offsets),
                "state": {"file": STATE_FILE, "sha256": hashlib.sha256(data).hexdigest()},
                "files": files,
            }
            write_durably(temp / MANIFEST, json.dumps(manifest, indent=1).encode())
            fsync_dir(temp)
            os.rename(temp, self.root / folder_name(seq))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        fsync_dir(self.root)
        self.prune()
        return seq

    def read(self, seq: int) -> Checkpoint:
        """One checkpoint, every file verified against its manifest."""
        folder = self.root / folder_name(seq)
        where = str(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_bytes())
        except FileNotFoundError as exc:
            raise CheckpointError(f"{where}: checkpoint {seq} does not exist (or was pruned)") from exc
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{where}: unreadable manifest ({exc})") from exc
        try:
            if manifest["format_version"] != FORMAT_VERSION:
                raise CheckpointError(
                    f"{where}: expected format_version {FORMAT_VERSION}, got {manifest['format_version']!r}"
                )
            if manifest["seq"] != seq:
                raise CheckpointError(f"{where}: expected seq {seq}, got {manifest['seq']!r}")
            offsets = _offsets_from_json(manifest["offsets"])
            created_at = float(manifest["created_at"])
            files, state_info = manifest["files"], manifest["state"]
            arrays = {
                str(name): read_npy(folder, str(name), info, CheckpointError) for name, info in files.items()
            }
            data = (folder / STATE_FILE).read_bytes()
            if hashlib.sha256(data).hexdigest() != state_info["sha256"]:
                raise CheckpointError(f"{where}/{STATE_FILE}: checksum mismatch (corrupt or partial)")
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
            raise CheckpointError(f"{where}: malformed checkpoint ({type(exc).__name__}: {exc})") from exc
        return Checkpoint(seq, offsets, unpack_state(data, arrays, where), created_at)

    def newest(self, accept: Callable[[Checkpoint], None] = lambda _c: None) -> Checkpoint | None:
        """The newest checkpoint that verifies and that ``accept`` does not refuse (by raising
        ``CheckpointError``, e.g. for a config it was not made with); older ones are the fallback.
        None when there is none."""
        for seq in reversed(self.seqs()):
            try:
                checkpoint = self.read(seq)
                accept(checkpoint)
            except CheckpointError as exc:
                log.error("checkpoint %d refused, trying an older one: %s", seq, exc)
                continue
            return checkpoint
        return None

    def prune(self) -> list[int]:
        """Delete all but the newest ``keep`` checkpoints (renamed away first: one atomic step)."""
        removed = []
        for seq in self.seqs()[: -self.config.keep]:
            trash = self.root / f"{_TRASH_PREFIX}{folder_name(seq)}-{secrets.token_hex(4)}"
            os.rename(self.root / folder_name(seq), trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(seq)
        return removed

    def remove_stale_temp(self) -> None:
        """Clear what a writer killed mid-write left behind; call once when the (single) writer starts."""
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
                    shutil.rmtree(path, ignore_errors=True)


def _offsets_to_json(offsets: Mapping[tuple[str, int], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(offsets.items()):
        out.setdefault(topic, {})[str(partition)] = int(offset)
    return out


def _offsets_from_json(raw: object) -> Offsets:
    if not isinstance(raw, dict):
        raise CheckpointError(f"offsets: expected a map of topics, got {type(raw).__name__}")
    offsets = {}
    for topic, parts in raw.items():
        for partition, offset in parts.items():
            if int(offset) < 0:
                raise CheckpointError(f"offsets: {topic}/{partition} has a negative offset {offset}")
            offsets[(str(topic), int(partition))] = int(offset)
    return offsets
