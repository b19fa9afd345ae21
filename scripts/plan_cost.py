"""Cost of planning a full snapshot's served rows (``ColdStart.plan``, which the updater runs on its loop
before the build thread assembles the tables), for a catalogue of a given size.

    .venv/bin/python scripts/plan_cost.py --items 1000000 --learned 0.3 --repeats 5

``--items`` items are listed (simulator-like titles and categories) and encoded by an untrained tower,
as at start-up; a share ``--learned`` of them, spread over the catalogue, has learned rows. Each call
plans a full snapshot as ``Updater.complete_rows`` does. ``--learned-elsewhere`` also passes the learned
ids as ``learned_elsewhere``, as the updater did before the twentieth session. Prints the median and
each call's wall seconds. To compare two versions of the code, run it from each (a worktree and
``PYTHONPATH``) in turns.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from recsim_stream.cold_start import ColdStart
from recsim_stream.config import ContentConfig
from recsim_stream.events import ItemMeta

DIM = 64  # the learner's default dimension
CATEGORIES = ("electronics.smartphone", "electronics.audio", "furniture.sofa", "apparel.shoes", "kids.toys")


def listed_cold_start(items: int) -> ColdStart:
    cold_start = ColdStart(ContentConfig(), DIM)
    cold_start.observe_items(
        [
            ItemMeta(f"i{i}", f"item {i % 5000} model {i}", CATEGORIES[i % len(CATEGORIES)])
            for i in range(items)
        ]
    )
    while cold_start.listed_unencoded:
        cold_start.encode_listed(60.0)
    return cold_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--learned", type=float, default=0.3, help="share of the items with learned rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--learned-elsewhere", action="store_true", help="pass the learned ids again")
    args = parser.parse_args()
    cold_start = listed_cold_start(args.items)
    learned = max(1, int(args.items * args.learned))
    ids = [f"i{i}" for i in np.linspace(0, args.items - 1, learned).astype(np.int64).tolist()]
    vectors = np.zeros((len(ids), DIM), np.float32)
    counts = np.ones(len(ids), np.int64)
    elsewhere = set(ids) if args.learned_elsewhere else ()
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        plan = cold_start.plan(ids, vectors, vectors, counts, learned_elsewhere=elsewhere, encode_limit=0)
        seconds.append(time.perf_counter() - started)
    assert plan.count == args.items
    print(
        f"{args.items:,} items ({args.learned:.0%} learned): full plan {statistics.median(seconds):.3f} s "
        f"(calls {', '.join(f'{s:.3f}' for s in seconds)})"
    )


if __name__ == "__main__":
    main()
