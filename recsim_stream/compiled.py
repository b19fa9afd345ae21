"""Types for the compiled (numba) loops of the training path, whose signatures are given so that
they compile, or load from numba's cache on disk, at import: never inside a caller's timing.

An input is typed read-only, which accepts writable arrays too: the arrays Ray hands a shard actor
are read-only, and a copy per call would cost what the loop saves.
"""

from __future__ import annotations

from numba import types

# Floating-point licences: reassociation lets a loop sum in vector lanes (a dot product, a row's
# squares: about 2x faster here); no assumption that values are finite, so an overflow stays inf.
FAST_SUMS = {"reassoc", "contract", "nsz", "arcp"}


def reads(dtype: types.Type, ndim: int = 1) -> types.Array:
    """A C-contiguous array the loop only reads."""
    return types.Array(dtype, ndim, "C", readonly=True)


def writes(dtype: types.Type, ndim: int = 1) -> types.Array:
    """A C-contiguous array the loop writes."""
    return types.Array(dtype, ndim, "C")
