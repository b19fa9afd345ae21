"""What the eval learner's per-event work costs in a loop, and between the driver's queries.

    .venv/bin/python scripts/learn_loop_cost.py ../shared/data/movielens-100k/canonical --runs 3

Builds the prequential steps of a canonical stream as ``recsim-stream eval`` does, then feeds them to
the learner's per-event path (``SgnsStreamModel._learn_pending`` one step at a time, with SGNS training
switched off so that only windows, pairs, key interning and the new-item record remain), each call
timed with ``perf_counter`` as eval times ``learn``. Two variants take turns, fresh models each run:
``loop`` calls nothing in between; ``queries`` asks the published model for its top 20 before every
predicted event, as the driver does. Garbage collection is set as eval sets it. Prints the median and
range of microseconds an event per variant; the gap is what the queries' eviction of the learner from
the caches costs (why ``SgnsStreamModel.learn`` keeps its steps for one loop at publish).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from recsim_stream.canonical_csv import read_events, read_items
from recsim_stream.config import Config
from recsim_stream.evaluate import Sessions, Step, sort_stream
from recsim_stream.gc_tuning import settle_heap
from recsim_stream.learner import Learner
from recsim_stream.sgns_model import SgnsStreamModel


def prequential_steps(events: list, gap_s: float) -> list[Step]:
    """The steps ``evaluate`` hands a model, in stream order."""
    sessions, steps = Sessions(gap_s), []
    for position, event in enumerate(sort_stream(events)):
        key = sessions.key(event)
        items = sessions.items(key)
        repeat = bool(items) and items[-1] == event.item_id
        steps.append(
            Step(position, key, event.user_id, tuple(items), event.item_id, event.kind, event.ts, repeat)
        )
        if not repeat:
            items.append(event.item_id)
    return steps


def us_per_event(config: Config, items: list, steps: list[Step], queries: bool) -> float:
    model = SgnsStreamModel(config)
    model.observe_items(items)
    model.publish()
    clock, total = time.perf_counter, 0.0
    for step in steps:
        if queries and step.prefix and not step.repeat:
            model.recommend(step.prefix, 20)
        model._pending.append(step)
        started = clock()
        model._learn_pending()
        total += clock() - started
    return 1e6 * total / len(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream", type=Path, help="a canonical directory: events.csv and items.csv")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="first N events only (0: all)")
    args = parser.parse_args()
    config = Config()
    events = list(read_events(args.stream / "events.csv"))
    if args.limit:
        events = events[: args.limit]
    items = list(read_items(args.stream / "items.csv"))
    steps = prequential_steps(events, config.eval.session_gap_s)
    settle_heap(config.process.gc_threshold)
    Learner.ready = lambda self: False  # no SGNS training: the per-event path alone
    results: dict[str, list[float]] = {"loop": [], "queries": []}
    for _ in range(args.runs):
        for variant in results:
            results[variant].append(us_per_event(config, items, steps, variant == "queries"))
    print(f"{len(steps):,} events, {args.runs} runs each")
    for variant, runs in results.items():
        print(
            f"  {variant:8s} median {statistics.median(runs):.2f} us/event  (runs {', '.join(f'{r:.2f}' for r in runs)})"
        )


if __name__ == "__main__":
    main()
