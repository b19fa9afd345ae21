"""What the updater's life-long item sets cost each snapshot, as they grow.

Two sets grow with a system's life and are consulted at every snapshot (every ``snapshot.interval_s``):

- the items deleted from the catalogue (``ColdStart.deleted``: a deleted item stays unserved even when
  clicked again, and compaction drops its tombstone after a while), whose rows each snapshot leaves out
  of its export. Timed for a delta export (the rows one interval changed) and a full export, and the
  cold start's part of a checkpoint (every ``checkpoint.interval_s``), which holds the set.
- the items with a learned row in the published chain (``ColdStart.learned``), against which the
  temperature fit (``ColdStart.calibrate_on_content``) counts the cold items, those listed without one.

Each is timed as this checkout's code does it, at several sizes:

    .venv/bin/python scripts/lifetime_set_costs.py --items 2000000 --deleted 0 10000 100000 1000000 \
        --listed 1000000 --learned 10000 100000 500000 1000000

Run it from another checkout with ``PYTHONPATH=<checkout>`` to compare versions: the code before
83ce942 turned the whole deleted set into keys at each snapshot (timed here as that step and its
``np.isin``, which had no other caller), and the code before 978dde1 intersected the listed and
the learned items at each temperature fit.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time

import numpy as np

from recsim_stream.cold_start import ColdStart
from recsim_stream.config import ContentConfig
from recsim_stream.events import ItemMeta
from recsim_stream.learner import ItemKeys
from recsim_stream.shard import ShardExport
from recsim_stream.snapshotter import snapshot_arrays

DIM = 64
NEW_ITEM_EVENTS = 64  # new-item events between two snapshots, the evidence one fit takes


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


def median_ms(fn, repeats: int, prepare=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        prepare()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def deleted_costs(args: argparse.Namespace) -> list[dict]:
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
        cold_start = ColdStart(ContentConfig(), DIM)
        cold_start.deleted = deleted
        row = {
            "deleted": count,
            "delta_ms": round(median_ms(lambda d=deleted: exclusion(items, delta, d), args.repeats), 2),
            "full_ms": round(
                median_ms(lambda d=deleted: exclusion(items, full, d), max(1, args.repeats // 2)), 1
            ),
            "checkpoint_ms": round(median_ms(cold_start.state, args.repeats), 2),
        }
        results.append(row)
        print(
            f"deleted {count:>10,}: leaving them out of a delta of {args.delta_rows:,} rows {row['delta_ms']:8.2f} ms, "
            f"of a full export of {args.full_rows:,} rows {row['full_ms']:8.1f} ms; "
            f"the cold start's checkpoint state {row['checkpoint_ms']:8.2f} ms (medians)",
            flush=True,
        )
    return results


def learned_costs(args: argparse.Namespace) -> list[dict]:
    started = time.perf_counter()
    cold_start = ColdStart(ContentConfig(), DIM)
    ids = [f"item-{i}" for i in range(args.listed)]
    cold_start.observe_items(
        [
            ItemMeta(i, f"product {n % 997} model {n % 31}", f"cat{n % 50}.sub{n % 7}", float(n % 500))
            for n, i in enumerate(ids)
        ]
    )
    cold_start.encode_listed(3600.0)
    print(f"{args.listed:,} listed items encoded in {time.perf_counter() - started:.1f} s", flush=True)
    takes_learned = "learned" in inspect.signature(cold_start.calibrate_on_content).parameters
    rng = np.random.default_rng(0)
    results = []
    for count in args.learned:
        learned = set(ids[:count])
        if not takes_learned:
            cold_start.published_learned(learned, full=True)
        targets = ids[count:] or ids  # cold items, the new-item events' targets
        prefixes = ids[: max(count, 1)]

        def record(prefixes: list[str] = prefixes, targets: list[str] = targets) -> None:
            for _ in range(NEW_ITEM_EVENTS):
                prefix = [prefixes[k] for k in rng.integers(0, len(prefixes), 3).tolist()]
                cold_start.record_new_item(prefix, targets[int(rng.integers(0, len(targets)))])

        def fit(learned=learned) -> None:
            if takes_learned:  # the code before: the learned set handed in, intersected each time
                cold_start.calibrate_on_content(learned)
            else:
                cold_start.calibrate_on_content()

        row = {"learned": count, "fit_ms": round(median_ms(fit, args.repeats, record), 2)}
        results.append(row)
        print(
            f"learned {count:>10,}: the temperature fit of a snapshot {row['fit_ms']:8.2f} ms (median)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2_000_000, help="item ids the updater has seen")
    parser.add_argument("--deleted", type=int, nargs="*", default=[0, 10_000, 100_000, 1_000_000])
    parser.add_argument("--delta-rows", type=int, default=3_000, help="rows a delta exports")
    parser.add_argument("--full-rows", type=int, default=1_000_000, help="rows a full snapshot exports")
    parser.add_argument("--listed", type=int, default=1_000_000, help="items listed with a content row")
    parser.add_argument("--learned", type=int, nargs="*", default=[10_000, 100_000, 500_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if max(args.deleted, default=0) > args.items or max(args.delta_rows, args.full_rows) > args.items:
        parser.error("--deleted, --delta-rows and --full-rows must not exceed --items")
    if max(args.learned, default=0) > args.listed:
        parser.error("--learned must not exceed --listed")
    out = {
        "items": args.items,
        "delta_rows": args.delta_rows,
        "full_rows": args.full_rows,
        "listed": args.listed,
    }
    out["deleted_runs"] = deleted_costs(args) if args.deleted else []
    out["learned_runs"] = learned_costs(args) if args.learned else []
    print(json.dumps(out))


if __name__ == "__main__":
    main()
