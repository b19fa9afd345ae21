"""``recsim-stream bench``: benchmarks through the real components, with same-run baselines.

``bench learner``: pairs/s of the SGNS path (sample, pull, step, push; in-process and Ray shards)
against gensim's effective pairs/s on the same sessions, median of ``--repeats`` runs.

``bench e2e``: a broker, the updater and the query API as processes; the simulator at ``--rate``
events/s for ``--duration`` s while a separate process queries; reports ingest and training rates,
wall-clock freshness of new items, query latency and peak memory.

``bench scaling``: a per-component cost model (events/s per core, bytes per item, snapshot and index
build seconds per million rows), the drain rate of a backlog with 1, 2 and 4 shards and 1 or 2
updater processes, and the cluster for a target load on paper (SCALING.md).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["learner", "e2e", "scaling"], help="which benchmark")
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
    e2e.add_argument(
        "--catalogue-wait-s",
        type=float,
        default=0.0,
        help="after the run, wait up to this long for the whole listed catalogue to be served",
    )
    e2e.add_argument(
        "--catalogue-first-s",
        type=float,
        default=0.0,
        help="before the stream, wait up to this long for the whole listed catalogue to be served from a"
        " full snapshot with approximate indexes (the steady state)",
    )
    e2e.add_argument(
        "--training-niceness",
        type=int,
        default=0,
        help="niceness of the updater (with its Ray workers) and the simulator; the API keeps 0",
    )
    e2e.add_argument(
        "--api-cpus",
        default="",
        metavar="LIST",
        help='CPUs of the query API alone (e.g. "1"); every other process runs on the rest',
    )
    e2e.add_argument(
        "--deletions-per-s",
        type=float,
        default=0.2,
        help="served items deleted from the catalogue per second while the stream runs, each timed"
        " until the API answers 404 (0 = none)",
    )
    e2e.add_argument(
        "--bulk-deletions",
        type=int,
        default=0,
        metavar="N",
        help="items of the initial catalogue deleted at once halfway through the paced phase (a category"
        " taken down); 50 of them timed until the API answers 404",
    )
    scaling = parser.add_argument_group("bench scaling (also --repeats, --bootstrap, --plot, --seed)")
    scaling.add_argument("--no-costs", action="store_true", help="skip the per-component cost model")
    scaling.add_argument(
        "--costs-from", default="", metavar="JSON", help="with --no-costs: the cost model of an earlier --out"
    )
    scaling.add_argument("--no-grid", action="store_true", help="skip the shards x updaters grid")
    scaling.add_argument(
        "--grid-from",
        default="",
        metavar="JSON",
        help="with --no-grid: the grids of earlier --out files (comma-separated), merged",
    )
    scaling.add_argument(
        "--stage-events", type=int, default=200_000, help="simulated events per stage timing"
    )
    scaling.add_argument(
        "--sizes", default="100000,1000000", help="rows of the synthetic snapshot and index builds"
    )
    scaling.add_argument(
        "--index-kind", choices=["hnsw", "ivf"], default="hnsw", help="index.kind of the builds"
    )
    scaling.add_argument("--events", type=int, default=200_000, help="backlog the grid drains")
    scaling.add_argument("--shards", default="1,2,4", help="learn.shards values of the grid")
    scaling.add_argument("--updaters", default="1,2", help="updater process counts of the grid")
    scaling.add_argument(
        "--layouts",
        default="local,head",
        help="local: Ray in the updater (1 updater); head: a Ray head joined",
    )
    scaling.add_argument(
        "--grid-repeats", type=int, default=2, help="drains per grid point; medians reported"
    )
    scaling.add_argument("--point-timeout-s", type=float, default=90.0, help="longest drain of one point")
    scaling.add_argument(
        "--freshness-s",
        type=float,
        default=0.0,
        help="seconds of bench e2e at --rate per shard count (0 = skip)",
    )
    scaling.add_argument("--out", default="", metavar="JSON", help="write every measurement here")


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
                catalogue_wait_s=args.catalogue_wait_s,
                catalogue_first_s=args.catalogue_first_s,
                training_niceness=args.training_niceness,
                api_cpus=args.api_cpus,
                deletions_per_s=args.deletions_per_s,
                bulk_deletions=args.bulk_deletions,
            )
        except ValueError as exc:
            print(f"recsim-stream {exc}", file=sys.stderr)
            return 2
        # Ctrl-C and a supervisor's TERM both clean up, even when started with SIGINT ignored (a
        # background job of a non-interactive shell inherits that).
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        result = run_e2e(options, log)
    elif args.what == "scaling":
        result = _run_scaling(args, log)
        if result is None:
            return 2
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


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _run_scaling(args: argparse.Namespace, log: Callable[[str], None]) -> dict | None:
    from recsim_stream import bench_scaling

    try:
        grid = None
        if not args.no_grid:
            grid = bench_scaling.GridOptions(
                shards=_ints(args.shards),
                updaters=_ints(args.updaters),
                layouts=tuple(x.strip() for x in args.layouts.split(",") if x.strip()),
                events=args.events,
                repeats=args.grid_repeats,
                point_timeout_s=args.point_timeout_s,
                bootstrap=args.bootstrap,
                seed=args.seed,
                freshness_s=args.freshness_s,
                freshness_rate=args.rate,
            )
        sizes = _ints(args.sizes)
        if not args.no_costs and (len(sizes) < 1 or min(sizes) < 1000):
            raise ValueError(f"bench scaling: --sizes must list row counts >= 1000, got {args.sizes!r}")
    except ValueError as exc:
        print(f"recsim-stream {exc}", file=sys.stderr)
        return None
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    result = bench_scaling.run(
        log,
        costs=not args.no_costs,
        costs_from=args.costs_from,
        grid_from=args.grid_from,
        grid=grid,
        stage_events=args.stage_events,
        repeats=args.repeats,
        sizes=sizes,
        index_kind=args.index_kind,
        plot=args.plot,
        out=args.out,
    )
    summary: dict = {"started_load_1m": result["started_load_1m"]}
    if "costs" in result:
        summary.update({f"cost_{k}": v for k, v in result["costs"]["model"].items()})
        summary["ray_efficiency"] = result["plan"]["target"]["ray_efficiency"]
        summary.update({f"sizing_{k}": v for k, v in result["plan"]["sizing"].items()})
    if "grid" in result:
        for row in result["grid"]["summary"]:
            key = f"grid_{row['layout']}_{row['updaters']}u_{row['shards']}s_records_per_s"
            summary[key] = row["records_per_s"]
    return summary
