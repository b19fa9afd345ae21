"""What the items deleted from the catalogue cost each snapshot of the updater, as their number grows.

The updater keeps every deleted item's id (``ColdStart.deleted``: a deleted item stays unserved even
when clicked again, and compaction drops its tombstone after a while), and each snapshot leaves their
rows out of what it exports. This times that exclusion, as this checkout's code does it, for a delta
export (the rows one snapshot interval changed) and a full export, at several sizes of the deleted set:

    .venv/bin/python scripts/deleted_items_cost.py --items 2000000 --deleted 0 10000 100000 1000000

Run it from another checkout with ``PYTHONPATH=<checkout>`` to compare versions. The code before
the exclusion asked only about exported ids turned the whole deleted set into keys first; for it, the
timing is that step plus its ``np.isin`` (it had no other caller).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from recsim_stream.learner import ItemKeys
from recsim_stream.shard import ShardExport
from recsim_stream.snapshotter import snapshot_arrays

DIM = 64


def export_of(keys: np.ndarray) -> ShardExport:
    rows = len(keys)
    vectors = np.zeros((rows, DIM), np.float32)
    ones = np.ones(rows, np.int64)
    return ShardExport(1, keys, vectors, vectors, ones, ones, np.zeros(0, np.int64))


def exclusion(items: ItemKeys, export: ShardExport, deleted: set[str]) -> None:
    """The snapshot's rows without the deleted ones, as this checkout's updater asks for them."""
    names = items.names

    def name(keys: np.ndarray) -> list[str | None]:
        return [names.get(k) for k in keys.tolist()]

    if hasattr(items, "keys_of_known"):  # the code before: every deleted id made a key, then isin
        snapshot_arrays([export], name, set(), items.keys_of_known(deleted))
    else:
        snapshot_arrays([export], name, set(), deleted)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2_000_000, help="item ids the updater has seen")
    parser.add_argument("--deleted", type=int, nargs="+", default=[0, 10_000, 100_000, 1_000_000])
    parser.add_argument("--delta-rows", type=int, default=3_000, help="rows a delta exports")
    parser.add_argument("--full-rows", type=int, default=1_000_000, help="rows a full snapshot exports")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if max(args.deleted) > args.items or max(args.delta_rows, args.full_rows) > args.items:
        parser.error("--deleted, --delta-rows and --full-rows must not exceed --items")
    started = time.perf_counter()
    items = ItemKeys()
    ids = [f"item-{i}" for i in range(args.items)]
    keys = np.fromiter(map(items.key, ids), dtype=np.int64, count=len(ids))
    print(f"{args.items:,} item ids interned in {time.perf_counter() - started:.1f} s", flush=True)
    # The newest items are exported; the deleted are the oldest, as a catalogue's churn leaves them.
    delta, full = export_of(keys[-args.delta_rows :]), export_of(keys[-args.full_rows :])
    results = []
    for count in args.deleted:
        deleted = set(ids[:count])
        row = {
            "deleted": count,
            "delta_ms": round(median_ms(lambda d=deleted: exclusion(items, delta, d), args.repeats), 2),
            "full_ms": round(median_ms(lambda d=deleted: exclusion(items, full, d), max(1, args.repeats // 2)), 1),
        }
        results.append(row)
        print(
            f"deleted {count:>10,}: a delta of {args.delta_rows:,} rows {row['delta_ms']:8.2f} ms, "
            f"a full export of {args.full_rows:,} rows {row['full_ms']:8.1f} ms (medians)",
            flush=True,
        )
    print(json.dumps({"items": args.items, "delta_rows": args.delta_rows, "full_rows": args.full_rows, "runs": results}))


if __name__ == "__main__":
    main()
