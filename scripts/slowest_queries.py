"""The tail of /similar and /recommend on the final state of a kept snapshot chain, and what the
slowest queries searched.

    .venv/bin/recsim-stream bench e2e --json --items 1000000 --duration 60 --catalogue-wait-s 180 --keep-logs
    RECSIM_INDEX_API_BUILD_IDLE=1 PYTHONPATH=scripts taskset -c 1 \
        .venv/bin/python scripts/slowest_queries.py /tmp/recsim-bench-e2e-XXXX/snapshots

Medians hide a slow path that a few subjects take: this asks ``IndexHolder.similar`` for seeded
random items and ``IndexHolder.recommend`` for seeded sessions of 1-5 random items (no HTTP, one
thread), prints p50 / p99 / max per endpoint, and for the slowest few every index search they made
(kind, rows, k asked, hits returned). It found a main search widening to every live row and cold
runs widening past dead rows (BENCHMARKS.md, thirteenth session).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from query_cost import load_final_state

from recsim_stream.config import load_config
from recsim_stream.index import VectorIndex


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("snapshots", type=Path, help="a kept chain: bench e2e --keep-logs, its snapshots/")
    parser.add_argument("--queries", type=int, default=1500, help="per endpoint")
    parser.add_argument("--show", type=int, default=3, help="slowest queries traced per endpoint")
    args = parser.parse_args()
    holder = load_final_state(args.snapshots, load_config())
    state = holder.state
    rng = np.random.default_rng(0)
    items = [state.item_id(int(p)) for p in rng.integers(0, state.item_count, args.queries)]
    sessions = [
        [state.item_id(int(p)) for p in rng.integers(0, state.item_count, rng.integers(1, 6))]
        for _ in range(args.queries)
    ]
    endpoints = {
        "similar": [lambda item=item: holder.similar(item, 20) for item in items],
        "recommend": [lambda session=session: holder.recommend(session, 20) for session in sessions],
    }
    print(f"final state v{state.version}: {state.item_count:,} items")
    for name, calls in endpoints.items():
        ms = []
        for call in calls:
            started = time.perf_counter()
            call()
            ms.append(1e3 * (time.perf_counter() - started))
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"{name}: {len(ms)} queries, p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(ms):.1f} ms")
        for slowest in np.argsort(ms)[::-1][: args.show]:
            print(f"  {ms[slowest]:.1f} ms: searches (kind, rows, k, hits) {_searches(calls[slowest])}")


def _searches(call) -> list[tuple[str, int, int, int]]:
    """Every ``VectorIndex.search`` that ``call`` makes."""
    made = []
    search = VectorIndex.search

    def traced(self, queries, k, params=None):
        scores, positions = search(self, queries, k, params)
        made.append((self.kind, self.size, k, int((positions[0] >= 0).sum())))
        return scores, positions

    VectorIndex.search = traced
    try:
        call()
    finally:
        VectorIndex.search = search
    return made


if __name__ == "__main__":
    main()
