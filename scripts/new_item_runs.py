"""How often the next item of a session is new (never clicked before in the stream), split by
whether the session's previous item had been new itself: the evidence for the two new-item shares
(``scoring.py``). Sessions as ``recsim-stream eval`` makes them (session_id, else a 30-min gap).

    .venv/bin/python scripts/new_item_runs.py ../shared/data/movielens-100k/canonical/events.csv
"""

from __future__ import annotations

import argparse
from collections import Counter

from recsim_stream.canonical_csv import read_events
from recsim_stream.evaluate import sort_stream

GAP_S = 1800.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", help="canonical events CSV")
    parser.add_argument("--early", type=int, default=10_000, help="events counted as the stream's start")
    args = parser.parse_args()
    stream = sort_stream(read_events(args.events))
    seen: set[str] = set()
    last: dict[str, tuple[float, int]] = {}  # user -> (last ts, session number)
    previous: dict[object, tuple[str, bool]] = {}  # session -> (its last item, whether it was new)
    counts: Counter[tuple[bool, bool, bool]] = Counter()  # (late, previous new, this new)
    for position, event in enumerate(stream):
        if event.session_id:
            key: object = ("s", event.session_id)
        else:
            ts, number = last.get(event.user_id, (event.ts, 0))
            number += event.ts - ts > GAP_S
            last[event.user_id] = (event.ts, number)
            key = (event.user_id, number)
        new = event.item_id not in seen
        before = previous.get(key)
        if before is not None and before[0] != event.item_id:
            counts[(position >= args.early, before[1], new)] += 1
        if before is None or before[0] != event.item_id:
            previous[key] = (event.item_id, new)
        seen.add(event.item_id)
    print("part of stream        previous item  next new / predictions  share")
    for late in (False, True):
        for previous_new in (False, True):
            hits, total = (
                counts[(late, previous_new, True)],
                sum(counts[(late, previous_new, n)] for n in (True, False)),
            )
            part = f"{'after' if late else 'first'} {args.early:,} events"
            print(
                f"{part:22}{'new' if previous_new else 'not new':15}{hits:>8,} / {total:<12,}  {hits / max(total, 1):.4f}"
            )


if __name__ == "__main__":
    main()
