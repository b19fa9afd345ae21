"""Files that survive a crash or a full disk: fsynced writes, verified ``.npy`` arrays.

Shared by the snapshot store and the checkpoint store, whose folders are both written to a temporary
name, fsynced and renamed into place. An array's manifest entry records its sha256, dtype and shape,
so a truncated or altered file is refused on load; ``.npy`` is read with ``allow_pickle=False``, so a
file a user hands us can hold numbers and strings only, never code.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path

import numpy as np

ArrayInfo = dict[str, object]  # file, sha256, dtype, shape


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_npy(folder: Path, name: str, arr: np.ndarray) -> ArrayInfo:
    """Write ``arr`` as ``<folder>/<name>.npy``; returns its manifest entry."""
    buffer = io.BytesIO()
    np.save(buffer, arr, allow_pickle=False)  # keeps a 0-d array 0-d (ascontiguousarray would not)
    data = buffer.getvalue()
    file = f"{name}.npy"
    write_durably(folder / file, data)
    return {
        "file": file,
        "sha256": hashlib.sha256(data).hexdigest(),
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
    }


def read_npy(folder: Path, name: str, info: object, error: type[Exception]) -> np.ndarray:
    """The array a manifest entry describes, verified; anything else raises ``error`` naming the file."""
    if not isinstance(info, dict) or not isinstance(info.get("file"), str):
        raise error(f"{folder}: manifest entry of {name} is not a file description ({info!r:.80})")
    path = folder / info["file"]
    if path.parent != folder or path.name != info["file"] or info["file"] == "..":
        raise error(f"{folder}: manifest names a file outside the folder for {name}: {info['file']!r:.80}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {name} ({exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.get("sha256"):
        raise error(f"{path}: expected sha256 {info.get('sha256')}, got {digest} (corrupt or partial)")
    dtype, shape, data_bytes = _npy_header(data, path, error)
    if str(dtype) != info.get("dtype") or shape != info.get("shape"):
        raise error(
            f"{path}: manifest says {info.get('dtype')} {info.get('shape')}, file holds {dtype} {shape}"
        )
    if data_bytes != math.prod(shape) * dtype.itemsize:
        raise error(
            f"{path}: expected {math.prod(shape) * dtype.itemsize} bytes of {dtype} {shape}, got {data_bytes}"
        )
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy refuses a bad file with one of several unrelated types
        raise error(f"{path}: not a valid .npy file ({type(exc).__name__}: {exc})") from exc


def _npy_header(data: bytes, path: Path, error: type[Exception]) -> tuple[np.dtype, list[int], int]:
    """(dtype, shape, bytes after the header) of an .npy file, read before numpy allocates the array that
    the header claims: a few hostile bytes could otherwise ask for terabytes."""
    handle = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
    except Exception as exc:  # ValueError, SyntaxError, tokenize.TokenError... for a malformed header
        raise error(f"{path}: not a valid .npy file ({type(exc).__name__}: {exc})") from exc
    if dtype.hasobject:
        raise error(
            f"{path}: not a valid .npy file (it holds Python objects, {dtype}; they are never unpickled)"
        )
    return dtype, list(shape), len(data) - handle.tell()
