"""``recsim-stream bench``: benchmarks through the real components, with same-run baselines.

``bench learner``: pairs/s of the SGNS path (sample, pull, step, push; in-process and Ray shards)
against gensim's effective pairs/s on the same sessions, median of ``--repeats`` runs.

``bench e2e``: a broker, the updater and the query API as processes; the simulator at ``--rate``
events/s for ``--duration`` s while a separate process queries; reports ingest and training rates,
wall-clock freshness of new items, query latency and peak memory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["learner", "e2e"], help="which benchmark")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    learner = parser.add_argument_group("bench learner")
    learner.add_argument("--repeats", type=int, default=3, help="runs per system; medians are reported")
    learner.add_argument("--no-ray", action="store_true", help="skip the Ray-shard run")
    e2e = parser.add_argument_group("bench e2e")
    e2e.add_argument("--items", type=int, default=5000, help="initial catalogue size (sim.items)")
    e2e.add_argument("--rate", type=float, default=2000.0, help="events per second in the paced phase")
    e2e.add_argument("--duration", type=float, default=60.0, help="seconds of the paced phase")
    e2e.add_argument(
        "--full-speed-s", type=float, default=0.0, help="seconds of an unpaced phase after it (0 = none)"
    )
    e2e.add_argument("--qps", type=float, default=50.0, help="queries per second while the stream runs")
    e2e.add_argument("--bootstrap", default="", help="use this Kafka broker instead of starting one")
    e2e.add_argument("--snapshot-interval-s", type=float, default=1.0, help="the updater's snapshot interval")
    e2e.add_argument("--seed", type=int, default=7, help="simulator seed")
    e2e.add_argument("--plot", default="", metavar="PNG", help="freshness and query latency over time")
    e2e.add_argument("--keep-logs", action="store_true", help="keep the services' logs (kept on failure)")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.what == "e2e":
        from recsim_stream.bench_e2e import E2EOptions
        from recsim_stream.bench_e2e import run as run_e2e

        try:
            options = E2EOptions(
                items=args.items,
                rate=args.rate,
                duration=args.duration,
                full_speed_s=args.full_speed_s,
                qps=args.qps,
                bootstrap=args.bootstrap,
                snapshot_interval_s=args.snapshot_interval_s,
                seed=args.seed,
                plot=args.plot,
                keep_logs=args.keep_logs,
            )
        except ValueError as exc:
            print(f"recsim-stream {exc}", file=sys.stderr)
            return 2
        # Ctrl-C and a supervisor's TERM both clean up, even when started with SIGINT ignored (a
        # background job of a non-interactive shell inherits that).
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        result = run_e2e(options, log)
    else:
        if args.repeats < 1:
            print("recsim-stream bench: --repeats must be >= 1", file=sys.stderr)
            return 2
        from recsim_stream import bench_learner

        result = bench_learner.run(args.repeats, not args.no_ray, log=log)
    for key, value in result.items():
        shown = f"{value:,}" if isinstance(value, int | float) and not isinstance(value, bool) else value
        print(f"{key:>28}  {shown}")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0
