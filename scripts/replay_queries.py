"""Query latency while a kept snapshot chain is loaded at its original pace, in one process.

    .venv/bin/recsim-stream bench e2e --json --items 1000000 --duration 60 --catalogue-wait-s 180 --keep-logs
    taskset -c 1 .venv/bin/python scripts/replay_queries.py /tmp/recsim-bench-e2e-XXXX/snapshots
    RECSIM_INDEX_API_BUILD_IDLE=1 taskset -c 1 .venv/bin/python scripts/replay_queries.py ...   # any setting

The chain's versions are made the newest one by one, each when its manifest's ``created_at`` comes
round again, and ``SnapshotWatcher`` loads them on its own thread as the API's would; a query thread
asks ``IndexHolder.recommend`` for sessions of 1-5 learned delta items, 50 times a second. Per 5 s
window: the wall and thread-CPU time of a query, p50 and p99. Wall time well over CPU time is time the
query waited for the core or the GIL. No HTTP and no client: what is left is the serving state's
own cost and its contention with the watcher's appends and index builds. The chain's ``LATEST``
pointer is restored afterwards. Settings come from the environment as for the API
(``RECSIM_INDEX_...``); pin the process to one core (taskset) to match ``bench e2e --api-cpus 1``.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
from replay_chain import Chain, percentile

from recsim_stream.config import load_config
from recsim_stream.query import IndexHolder, SnapshotWatcher


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("snapshots", type=Path, help="a kept chain: bench e2e --keep-logs, its snapshots/")
    parser.add_argument("--qps", type=float, default=50.0)
    parser.add_argument("--window-s", type=float, default=5.0)
    args = parser.parse_args()
    config = load_config()
    chain = Chain(args.snapshots)
    holder = IndexHolder(config.api)
    watcher = SnapshotWatcher(chain.store, holder, config.index, poll_s=config.api.poll_s)
    timings: list[tuple[float, float, float]] = []  # (started, wall ms, CPU ms)
    stop = threading.Event()

    def ask() -> None:
        rng = np.random.default_rng(0)
        while not stop.wait(1.0 / args.qps):
            state = holder.state
            known = None if state is None else state.view.known.positions
            if known is None or not len(known):
                continue
            session = [state.item_id(int(p)) for p in known[rng.integers(0, len(known), rng.integers(1, 6))]]
            started, cpu = time.perf_counter(), time.thread_time()
            holder.recommend(session, 20)
            timings.append((started, 1e3 * (time.perf_counter() - started), 1e3 * (time.thread_time() - cpu)))

    chain.point(chain.versions[0])
    watcher.start()
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    began = time.perf_counter()
    try:
        for version in chain.versions[1:]:
            time.sleep(max(0.0, began + chain.since_first(version) - time.perf_counter()))
            chain.point(version)
            watcher.notify()
        time.sleep(5.0)
    finally:
        stop.set()
        asker.join()
        watcher.stop()
        chain.restore()
    first = timings[0][0] if timings else began
    windows: dict[int, list[tuple[float, float]]] = {}
    for started, wall, cpu in timings:
        windows.setdefault(int((started - first) // args.window_s), []).append((wall, cpu))
    print("window_s  queries  wall_p50_ms  wall_p99_ms  cpu_p50_ms  cpu_p99_ms")
    for window, rows in sorted(windows.items()):
        walls, cpus = [w for w, _ in rows], [c for _, c in rows]
        print(
            f"{window * args.window_s:8.0f}  {len(rows):7d}  {percentile(walls, 50):11.1f}  "
            f"{percentile(walls, 99):11.1f}  {percentile(cpus, 50):10.1f}  {percentile(cpus, 99):10.1f}"
        )


if __name__ == "__main__":
    main()
