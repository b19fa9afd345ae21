"""Write the rows of a canonical items CSV whose item occurs in the first N events of an events CSV.

    .venv/bin/python scripts/items_in_events.py EVENTS.csv ITEMS.csv N OUT.csv

The control for measuring cold start with distractors: evaluating the first N events with the full
items file lists items nobody clicks in that window (distractors among the never-seen candidates);
with this file, the never-seen candidates are exactly the items that will be clicked, an upper bound.
"""

from __future__ import annotations

import argparse
import csv
import itertools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events")
    parser.add_argument("items")
    parser.add_argument("n", type=int, help="the first N rows of EVENTS.csv (as eval --limit N reads them)")
    parser.add_argument("out")
    args = parser.parse_args()
    with open(args.events, newline="") as f:
        clicked = {row["item_id"] for row in itertools.islice(csv.DictReader(f), args.n)}
    with open(args.items, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames is not None, f"{args.items}: no header"
        kept = [row for row in reader if row["item_id"] in clicked]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(kept)
    print(f"{args.out}: {len(kept)} items occur in the first {args.n} events")


if __name__ == "__main__":
    main()
