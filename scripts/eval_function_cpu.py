"""CPU time spent inside chosen functions while the eval learner (RECSIM-SGNS alone) runs on a stream:
what one part of the learning core costs, without taking it out.

    .venv/bin/python scripts/eval_function_cpu.py ../shared/data/rees46-multicat-oct2019-head/canonical \
        recsim_stream.sampler:NegativeSampler.observe --runs 3

Each run is a fresh process (``recsim-stream eval DIR/events.csv --items DIR/items.csv --json``) with
the functions wrapped to add up this thread's CPU time (``time.thread_time``) and their calls; a call
made inside another wrapped call counts for both. Prints one line per function: the median seconds
over the runs, the runs' range, calls, and microseconds per stream event. To compare two versions
of the code, run it from each (a worktree and ``PYTHONPATH``) in turns.

The figure includes the wrapper's own cost, two reads of the thread's CPU clock (a system call) per
call. The line says how much that is at least (timed on a wrapped no-op); in the learner's loop it is
more: ``Learner.ready``, 0.13 us a call under ``timeit``, read 1.41-1.45 us a call here (sixteenth
session). For a function called once an event, prefer ``learning_core_costs.py``, which takes parts out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

_RESULT = "function-cpu: "
_TIMER = "timer-cost"  # the wrapper's own CPU seconds a call, measured in the child


def _wrap(spec: str, totals: dict[str, list[float]]) -> None:
    """Replace ``module:Qualified.name`` by a wrapper that adds to ``totals[spec]`` = [seconds, calls]."""
    module_name, _, qualname = spec.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    _wrap_attribute(owner, name, spec, totals)


def _wrap_attribute(owner: object, name: str, key: str, totals: dict[str, list[float]]) -> None:
    original = getattr(owner, name)
    totals[key] = [0.0, 0]

    def timed(*args, **kwargs):
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            total = totals[key]
            total[0] += time.thread_time() - started
            total[1] += 1

    setattr(owner, name, timed)


def _timer_cost(calls: int = 100_000) -> float:
    """CPU seconds the wrapper itself adds to a call, timed on a wrapped no-op in a tight loop: a lower
    bound, as it costs more inside the learner's loop (the module docstring)."""
    holder = types.SimpleNamespace(noop=lambda: None)
    totals: dict[str, list[float]] = {}
    _wrap_attribute(holder, "noop", "noop", totals)
    for _ in range(calls):
        holder.noop()
    return totals["noop"][0] / calls


def _child(stream: Path, functions: list[str], limit: int | None) -> None:
    totals: dict[str, list[float]] = {}
    for spec in functions:
        _wrap(spec, totals)
    from recsim_stream import cli  # noqa: PLC0415 - after the wrapping, as the eval imports them

    sys.argv = [
        "recsim-stream",
        "eval",
        str(stream / "events.csv"),
        "--items",
        str(stream / "items.csv"),
        "--json",
    ]
    if limit is not None:
        sys.argv += ["--limit", str(limit)]
    try:
        cli.main()
    except SystemExit as stop:
        if stop.code:
            raise
    totals[_TIMER] = [_timer_cost(), 1]
    print(_RESULT + json.dumps(totals), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream", type=Path, help="a canonical data set directory (events.csv, items.csv)")
    parser.add_argument("functions", nargs="+", help="module:Qualified.name of each function to time")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, help="use only the first N events of the stream")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.stream, args.functions, args.limit)
        return
    runs: list[dict[str, list[float]]] = []
    events = 0
    for run in range(args.runs):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                str(args.stream),
                *args.functions,
                "--child",
                *(["--limit", str(args.limit)] if args.limit is not None else []),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        runs.append(json.loads(next(line for line in out if line.startswith(_RESULT))[len(_RESULT) :]))
        events = json.loads(next(line for line in reversed(out) if line.startswith("{")))["events"]
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    for spec in args.functions:
        seconds = [r[spec][0] for r in runs]
        calls = runs[0][spec][1]
        if calls == 0:
            raise SystemExit(f"{spec} was never called: nothing was measured")
        median = statistics.median(seconds)
        timer = statistics.median(r[_TIMER][0] for r in runs)
        print(
            f"{spec}: {median:.4f} s CPU (runs {min(seconds):.4f}-{max(seconds):.4f}), {calls} calls, "
            f"{median / events * 1e6:.2f} us per event ({events} events); the timer itself: at least "
            f"{timer * 1e6:.2f} us a call, {timer * calls:.4f} s of the figure"
        )


if __name__ == "__main__":
    main()
