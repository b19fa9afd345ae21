"""CPU per /recommend on the final state of a kept snapshot chain, per cold-search breadth.

    .venv/bin/recsim-stream bench e2e --json --items 1000000 --duration 60 --catalogue-wait-s 180 --keep-logs
    .venv/bin/python scripts/query_cost.py /tmp/recsim-bench-e2e-XXXX/snapshots --probes 32 16 8
    PYTHONPATH=<worktree> .venv/bin/python scripts/query_cost.py ...    # an older tree, same chain

The chain is loaded version by version through ``SnapshotWatcher``, each version's background
index builds awaited (so the delta's sealed runs and the main cold index are those the API would have), then 300 seeded
sessions of 1-5 learned items ask ``IndexHolder.recommend`` for 20 items. For each
``index.cold_nprobe`` asked, in rounds: the median thread CPU time per query, the share of each
top-20 also in the top-20 of a search of every cell (``--wide``), and the same for the new-item
component's own top-20. ``--dump FILE`` writes the top-20 lists at the first breadth as JSON, to
compare two trees (the same sessions for the same chain).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from recsim_stream.config import Config, SnapshotConfig
from recsim_stream.query import IndexHolder, SnapshotWatcher
from recsim_stream.scoring import query_with_prior, session_query
from recsim_stream.snapshot import LATEST, SnapshotStore


def load_final_state(root: Path, config: Config) -> IndexHolder:
    """The holder serving the chain's newest version, loaded one version at a time as the API would."""
    store = SnapshotStore(SnapshotConfig(dir=str(root)))
    holder = IndexHolder(config.api)
    watcher = SnapshotWatcher(store, holder, config.index, poll_s=3600)
    pointer = root / LATEST
    kept = pointer.read_text()
    try:
        for version in store.versions():
            pointer.write_text(f"{version}\n")
            watcher.poll_once()
            watcher._log.wait_for_builds(300)
            watcher._log.wait_for_sealing(300)  # the main cold rows' index too, served from the next version
    finally:
        pointer.write_text(kept)
    return holder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("snapshots", type=Path, help="a kept chain: bench e2e --keep-logs, its snapshots/")
    parser.add_argument("--probes", type=int, nargs="+", default=[16], help="cold_nprobe values to time")
    parser.add_argument("--wide", type=int, default=4096, help="probes of the reference search")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dump", type=Path, help="write the top-20 lists at the first --probes here")
    args = parser.parse_args()
    config = Config()
    holder = load_final_state(args.snapshots, config)
    state = holder.state
    new = state.new_items
    cold = ([new.main_run.index] if new.main_run is not None else []) + [run.index for run in new.delta_runs]
    print(f"final state v{state.version}: {state.item_count:,} items; cold runs {[i.size for i in cold]}; "
          f"learned delta rows {state.view.known.size:,}")  # fmt: skip
    rng = np.random.default_rng(0)
    known = state.view.known.positions
    sessions = [[state.item_id(int(p)) for p in known[rng.integers(0, len(known), rng.integers(1, 6))]]
                for _ in range(300)]  # fmt: skip
    queries = []
    for items in sessions:
        recent = [int(state.positions[i]) for i in items][-config.api.session_items :]
        query = query_with_prior(session_query(np.stack([state.input_vector(p) for p in recent])))
        queries.append((state.content_query(recent), query[:-1]))

    def probe(n: int) -> None:
        for index in cold:
            index.index.nprobe = min(n, index.index.nlist)

    def answers() -> tuple[list[list[str]], list[float]]:
        lists, cpu = [], []
        for items in sessions:
            started = time.thread_time()
            found = holder.recommend(items, 20)[1]
            cpu.append(time.thread_time() - started)
            lists.append([i for i, _ in found])
        return lists, cpu

    def cold_top() -> list[set[int]]:
        return [set(new.best(c, q, 20, set())[1].tolist()) for c, q in queries]

    def overlap(got: list, truth: list) -> float:
        return statistics.mean(len(set(g) & set(t)) / max(1, len(t)) for g, t in zip(got, truth, strict=True))

    probe(args.wide)
    truth, cold_truth = answers()[0], cold_top()
    for n in args.probes:
        probe(n)
        medians = []
        for _ in range(args.rounds):
            lists, cpu = answers()
            medians.append(1e3 * statistics.median(cpu))
        print(f"cold_nprobe {n:4d}: CPU per /recommend, median per round {', '.join(f'{m:.2f}' for m in medians)} ms; "
              f"top-20 agreement with {args.wide} probes {overlap(lists, truth):.3f}, "
              f"cold top-20 {overlap(cold_top(), cold_truth):.3f}")  # fmt: skip
        if args.dump is not None and n == args.probes[0]:
            args.dump.write_text(json.dumps(lists))


if __name__ == "__main__":
    main()
