"""Run a ``recsim-stream`` command and report the garbage collector's passes in it.

    .venv/bin/python scripts/gc_pauses.py train --kafka-bootstrap 127.0.0.1:39092 ... --idle-exit-s 3

Prints each full (generation 2) collection with its time since start and duration as it happens, and
a count and total per generation at exit, on stderr. ``process.gc_threshold`` and the freeze of
``gc_tuning.settle_heap`` apply as in the service; compare with ``RECSIM_PROCESS_GC_THRESHOLD=0``.
"""

from __future__ import annotations

import atexit
import gc
import sys
import time

from recsim_stream.cli import main

START = time.perf_counter()
totals = {generation: [0, 0.0] for generation in range(3)}
began = [0.0]


def observe(phase: str, info: dict) -> None:
    if phase == "start":
        began[0] = time.perf_counter()
        return
    took = time.perf_counter() - began[0]
    totals[info["generation"]][0] += 1
    totals[info["generation"]][1] += took
    if info["generation"] == 2:
        print(
            f"gc: full collection at {began[0] - START:.2f} s: {took * 1e3:.0f} ms",
            file=sys.stderr,
            flush=True,
        )


def report() -> None:
    for generation, (count, seconds) in totals.items():
        print(f"gc: generation {generation}: {count} collections, {seconds:.3f} s", file=sys.stderr)


if __name__ == "__main__":
    gc.callbacks.append(observe)
    atexit.register(report)
    sys.argv = ["recsim-stream", *sys.argv[1:]]
    sys.exit(main())
