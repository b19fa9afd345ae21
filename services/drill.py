"""``recsim-stream drill FAULT``: inject a fault into a running updater repeatedly and account for every
event (``recsim_stream/drills.py``). Prints progress on stderr and one JSON line on stdout."""

from __future__ import annotations

import argparse
import json
import sys

from recsim_stream.drills import FAULTS, DrillOptions
from recsim_stream.drills import run as run_drill

_DEFAULTS = DrillOptions()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fault", choices=FAULTS, help="kill-updater: SIGKILL the updater and its Ray; "
                        "kill-shard: SIGKILL one shard actor's worker")  # fmt: skip
    parser.add_argument("--faults", type=int, default=_DEFAULTS.faults, help="how many times to inject it")
    parser.add_argument("--events", type=int, default=_DEFAULTS.events, help="simulated events")
    parser.add_argument("--rate", type=float, default=_DEFAULTS.rate, help="simulated events per second")
    parser.add_argument("--items", type=int, default=_DEFAULTS.items, help="simulated catalogue size")
    parser.add_argument(
        "--bad-records", type=int, default=_DEFAULTS.bad_records, help="undecodable records mixed in"
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="simulator and fault timing seed")
    parser.add_argument("--checkpoint-interval-s", type=float, default=_DEFAULTS.checkpoint_interval_s)
    parser.add_argument("--bootstrap", default="", help="an existing broker (default: a private one)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")


def run(args: argparse.Namespace) -> int:
    options = DrillOptions(
        fault=args.fault,
        faults=args.faults,
        events=args.events,
        rate=args.rate,
        items=args.items,
        bad_records=args.bad_records,
        seed=args.seed,
        checkpoint_interval_s=args.checkpoint_interval_s,
        bootstrap=args.bootstrap,
        keep_logs=args.keep_logs,
    )
    result = run_drill(options, lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, sort_keys=True))
    return 0 if result["events_lost"] == 0 and result["events_applied_twice"] == 0 else 1
