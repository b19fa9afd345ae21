"""Cost of assembling a full snapshot's served tables (``ServedRowsPlan.assemble``): time and the peak
of the memory it allocates, for a catalogue of a given size.

    .venv/bin/python scripts/assemble_cost.py --items 1000000 --learned 0.3 --repeats 3

The plan is synthetic, as the snapshotter hands it to its build thread: ``--items`` rows with content
vectors, of which a share ``--learned`` also has learned vectors, with Zipf(1.5) interaction counts (a
long tail: most learned rows have few interactions, so their vectors are blended with content); the
other rows are content-only. Prints the first call's wall seconds, on memory the process never had (as a
full snapshot minutes after the last one finds it: the first touch of each page is most of the cost),
the median of the later calls', which reuse the memory freed before them, and the median peak of the
memory numpy allocated during a call (``tracemalloc``), the served tables included. To compare two
versions of the code, run it from each (a worktree and ``PYTHONPATH``) in turns.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from recsim_stream.cold_start import ServedRowsPlan, blend_below
from recsim_stream.config import ContentConfig

DIM = 64  # the learner's default dimension


def synthetic_plan(items: int, learned_share: float, seed: int = 0) -> ServedRowsPlan:
    rng = np.random.default_rng(seed)
    learned = int(items * learned_share)
    content = ContentConfig()
    return ServedRowsPlan(
        ids=[f"i{i}" for i in range(items)],
        rows=rng.permutation(items),
        content=rng.standard_normal((items, 2 * DIM)).astype(np.float32),
        norm=np.float32(2.0),
        dim=DIM,
        inputs=rng.standard_normal((learned, DIM)).astype(np.float32),
        outputs=rng.standard_normal((learned, DIM)).astype(np.float32),
        counts=np.minimum(rng.zipf(1.5, learned), 1 << 20).astype(np.int64),
        blend_below=blend_below(content.blend_half_life),
        blend_half_life=content.blend_half_life,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--learned", type=float, default=0.3, help="share of the rows with learned vectors")
    parser.add_argument("--repeats", type=int, default=3, help="calls, the first on fresh memory")
    args = parser.parse_args()
    plan = synthetic_plan(args.items, args.learned)
    seconds, peaks = [], []
    tracemalloc.start()
    for _ in range(args.repeats):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        served = plan.assemble()
        seconds.append(time.perf_counter() - started)
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
        del served
    later = f"{statistics.median(seconds[1:]):.3f} s" if len(seconds) > 1 else "-"
    print(
        f"{args.items:,} items ({args.learned:.0%} learned): assemble {seconds[0]:.3f} s on fresh memory, "
        f"{later} after that; peak allocated {statistics.median(peaks) / 2**20:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
