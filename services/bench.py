"""``recsim-stream bench``: benchmarks through the real components, with same-run baselines.

``bench learner``: pairs/s of the SGNS path (sample, pull, step, push; in-process and Ray shards)
against gensim's effective pairs/s on the same sessions, median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["learner"], help="which benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="runs per system; medians are reported")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray-shard run")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        print("recsim-stream bench: --repeats must be >= 1", file=sys.stderr)
        return 2
    from recsim_stream import bench_learner

    result = bench_learner.run(args.repeats, not args.no_ray, log=lambda line: print(line, file=sys.stderr, flush=True))
    for key, value in result.items():
        print(f"{key:>28}  {value:,}")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0
