"""How long the query API's snapshot loads hold the interpreter (GIL) against queries, in process.

    .venv/bin/python scripts/gil_stalls.py                      # build the chain once (cached), replay it
    .venv/bin/python scripts/gil_stalls.py --queries --repeats 3
    .venv/bin/python scripts/gil_stalls.py --trace-c            # also list the watcher's longest C calls

At 1M items the end-to-end benchmark's slow queries mostly wait, largely for the snapshot watcher's
thread (BENCHMARKS.md, "Where the 1M query tail comes from"). This replays a realistic chain without
Kafka or Ray: a full snapshot (``--full-rows``, with its shipped indexes, written by the project's own
``SnapshotStore`` and ``build_main_indexes``) followed by deltas alternating between a bulk listing of
``--cold-rows`` new cold content rows and ``--learned-rows`` learned rows (updates of known ids, cold
ids clicked), until ``--items`` ids. The chain is written once to ``--dir`` and reused while its
parameters match.

Each repeat replays the chain through a fresh ``SnapshotWatcher``/``IndexHolder`` on a thread of
its own (the pointer ``LATEST`` moves one version at a time; ``--gap-s`` between swaps), while
- a ticker thread sleeps 1 ms in a loop and records how late each wake-up is: a thread that wants
  the interpreter waits that long (the GIL stall histogram). It runs under SCHED_FIFO where allowed
  (``--no-fifo`` to not), so that other processes on the machine do not delay its wake-ups;
- a control ticker does the same in a process of its own, which shares the CPUs but not the GIL: what
  it sees is the machine's scheduling (other benchmarks on 2 cores), the rest is the interpreter;
- with ``--queries``, a query thread calls ``holder.similar`` and ``holder.recommend`` at ``--qps``
  and records their latency;
- with ``--http``, the API itself (``http_api.create_app`` under uvicorn, on a thread, as ``serve``
  runs it) answers ``/items/{id}/similar`` and ``/recommend`` from a client in another process at
  ``--qps``, which records the latency over HTTP.
It prints, per repeat and as the median over repeats: the stall p50/p99/max, the share of ticks late by
more than 5 and 20 ms, the load time per swap, each instrumented step's time per swap (p50/p99/max),
which step was running when the stalls over ``--stall-ms`` happened (the innermost one holding the
middle of the stall), where the other threads were right after each such stall (the one that held
the GIL is among them), and the query latencies. Steps are timed by wrapping the functions the watcher
calls (only those that exist: the script runs against older trees too, e.g. ``PYTHONPATH=<worktree>``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import uvicorn

from recsim_stream import delta_log, query, snapshot
from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
from recsim_stream.http_api import create_app
from recsim_stream.index import build_main_indexes, ship
from recsim_stream.metrics import new_registry
from recsim_stream.query import IndexHolder, SnapshotWatcher
from recsim_stream.snapshot import LATEST, SnapshotArrays, SnapshotStore

SCORING = {"new_item_share": 0.05, "new_item_share_after_cold": 0.15, "cold_temperature": 0.1}
CLUSTERS = 2000  # content clusters: real content vectors cluster, and the API's IVF builds need it to pass their gate

# (module or class, attribute, step name): what the watcher calls on a swap, timed when present.
STEPS = (
    (SnapshotStore, "read", "read"),
    (snapshot, "read_npy", "read/read_npy"),
    (snapshot, "_check_servable", "read/check_servable"),
    (query, "build_main", "build_main"),
    (delta_log.DeltaLog, "append", "append"),
    (delta_log.DeltaLog, "_append", "append/_append"),
    (delta_log.DeltaLog, "_view", "append/_view"),
    (delta_log.Segments, "refresh", "append/_view/segments"),
    (query, "serve_view", "serve_view"),
    (query, "_new_items", "serve_view/new_items"),
    (query, "merge_parts", "serve_view/merge_parts"),
)


# -- the chain -------------------------------------------------------------------------------------


def chain_params(args: argparse.Namespace) -> dict:
    keys = ("full_rows", "items", "cold_rows", "learned_rows", "dim", "seed", "index_kind")
    return {k: getattr(args, k) for k in keys}


def content_rows(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    rows = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, centres.shape[1]))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def rows_of(
    rng: np.random.Generator, centres: np.ndarray, ids: np.ndarray, cold: np.ndarray, dim: int
) -> SnapshotArrays:
    """Rows as the updater serves them: cold rows are their content vector's halves (cold_start.py),
    learned ones move away from it."""
    n = len(ids)
    content = content_rows(rng, centres, n)
    inputs, outputs = content[:, :dim] * 3.0, content[:, dim:] * 3.0
    learned = ~cold
    inputs[learned] += rng.normal(scale=0.5, size=(int(learned.sum()), dim)).astype(np.float32)
    outputs[learned] += rng.normal(scale=0.5, size=(int(learned.sum()), dim)).astype(np.float32)
    counts = np.where(cold, 0, rng.integers(1, 200, n)).astype(np.int64)
    return SnapshotArrays(np.asarray(ids, dtype="U"), inputs, outputs, counts, cold.copy(), content)


def write_chain(args: argparse.Namespace, root: Path) -> int:
    """Write the full snapshot and its deltas into ``root``; returns the number of versions."""
    rng = np.random.default_rng(args.seed)
    dim = args.dim
    centres = rng.normal(size=(CLUSTERS, 2 * dim))
    store = SnapshotStore(SnapshotConfig(dir=str(root), keep=1))
    ids = np.array([f"i{j}" for j in range(args.full_rows)])
    cold = rng.random(args.full_rows) < 0.3
    full = rows_of(rng, centres, ids, cold, dim)
    started = time.perf_counter()
    config = IndexConfig(kind=args.index_kind, build_threads=os.cpu_count() or 1)
    indexes = build_main_indexes(full.input_vectors, full.output_vectors, full.counts, config, ~full.cold)
    print(
        f"chain: main indexes ({args.index_kind}) built in {time.perf_counter() - started:.1f} s", flush=True
    )
    store.write(1, full, offsets={}, newest_event_ts=None, scoring=SCORING, index=ship(indexes))
    known = list(np.flatnonzero(~cold))
    cold_ids = list(np.flatnonzero(cold))
    listed, version = args.full_rows, 1
    while listed < args.items:
        version += 1
        if version % 2 == 0:  # a bulk listing: new cold content rows
            n = min(args.cold_rows, args.items - listed)
            new = np.arange(listed, listed + n)
            listed += n
            cold_ids.extend(new.tolist())
            arrays = rows_of(rng, centres, np.array([f"i{j}" for j in new]), np.ones(n, bool), dim)
        else:  # clicks: known ids learn, some cold ids are clicked for the first time
            clicked = rng.choice(len(cold_ids), size=args.learned_rows // 6, replace=False)
            first = [cold_ids[c] for c in sorted(clicked, reverse=True)]
            for c in sorted(clicked, reverse=True):
                cold_ids[c] = cold_ids[-1]
                cold_ids.pop()
            again = rng.choice(len(known), size=args.learned_rows - len(first), replace=False)
            rows = np.concatenate([np.array(known)[again], np.array(first, dtype=np.int64)])
            known.extend(first)
            arrays = rows_of(rng, centres, np.array([f"i{j}" for j in rows]), np.zeros(len(rows), bool), dim)
        store.write(
            version, arrays, offsets={}, newest_event_ts=None, parent_version=version - 1, scoring=SCORING
        )
    return version


def ensure_chain(args: argparse.Namespace) -> tuple[Path, int]:
    """The chain for these parameters, written unless ``--dir`` already holds it."""
    root = Path(args.dir)
    stamp = root / "params.json"
    params = chain_params(args)
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return root, SnapshotStore(SnapshotConfig(dir=str(root))).versions()[-1]
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    versions = write_chain(args, root)
    stamp.write_text(json.dumps(params))
    print(
        f"chain: {versions} versions written to {root} in {time.perf_counter() - started:.1f} s", flush=True
    )
    return root, versions


# -- instrumentation -------------------------------------------------------------------------------


@dataclass
class Steps:
    """Intervals of the wrapped functions on the replay thread: (name, depth, start, end, CPU seconds
    of the thread: unlike the wall time, barely moved by other processes on the machine)."""

    intervals: list[tuple[str, int, float, float, float]] = field(default_factory=list)
    depth: int = 0
    thread: int | None = None

    def wrap(self, fn: Callable, name: str) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if threading.get_ident() != self.thread:
                return fn(*args, **kwargs)
            self.depth += 1
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.intervals.append(
                    (name, self.depth, started, time.perf_counter(), time.thread_time() - cpu)
                )

        return timed


def instrument(steps: Steps) -> None:
    for owner, attribute, name in STEPS:
        fn = getattr(owner, attribute, None)
        if fn is not None:
            setattr(owner, attribute, steps.wrap(fn, name))


class CallTracer:
    """``--trace-c``: the replay thread's C calls (builtins, numpy methods) longer than ``min_ms``."""

    def __init__(self, min_ms: float) -> None:
        self.min_s = min_ms / 1000
        self.calls: dict[str, list[float]] = defaultdict(list)
        self._started: list[float] = []

    def __call__(self, frame, event, arg) -> None:
        if event == "c_call":
            self._started.append(time.perf_counter())
        elif event in ("c_return", "c_exception") and self._started:
            took = time.perf_counter() - self._started.pop()
            if took >= self.min_s:
                where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
                self.calls[f"{getattr(arg, '__qualname__', arg)} @ {where}"].append(took)


# -- the replay ------------------------------------------------------------------------------------


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


IDLE = ("sleep", "wait", "acquire", "ticker", "_wait_for_tstate_lock", "readinto", "communicate")


def where_others_are(me: int, depth: int = 3) -> str:
    """Where the other busy threads are, innermost frames first: taken right after a late wake-up, it
    names the thread that just let go of the GIL (or one that waits for it after a C call)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    busy = []
    for ident, frame in sys._current_frames().items():
        if ident == me or frame.f_code.co_name in IDLE:
            continue
        stack = []
        while frame is not None and len(stack) < depth:
            stack.append(f"{Path(frame.f_code.co_filename).stem}:{frame.f_lineno}:{frame.f_code.co_name}")
            frame = frame.f_back
        busy.append(f"{names.get(ident, ident)}: " + " < ".join(stack))
    return " | ".join(sorted(busy)) or "(no other thread busy)"


def ticker(
    stop: threading.Event,
    out: list[tuple[float, float]],
    period: float,
    fifo: bool,
    where: dict,
    min_s: float,
) -> None:
    """Sleep ``period`` in a loop; record (when it went to sleep, how late it woke), and for wake-ups
    late by ``min_s`` or more, where the other threads are (``where``: description -> lateness)."""
    if fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # this thread only
    me = threading.get_ident()
    while not stop.is_set():
        started = time.perf_counter()
        time.sleep(period)
        late = time.perf_counter() - started - period
        out.append((started + period, late))
        if late >= min_s:
            where.setdefault(where_others_are(me), []).append(late)


# The end of each child script below: ``run`` on a thread until stdin closes, then ``result`` as JSON.
UNTIL_STDIN_CLOSES = """
thread = threading.Thread(target=run)
thread.start()
sys.stdin.read()
stop.set()
thread.join()
json.dump(result, sys.stdout)
"""

CONTROL = (
    """
import json, os, sys, threading, time
period, fifo, lates, stop = float(sys.argv[1]), sys.argv[2] == "1", [], threading.Event()
def run():
    if fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    while not stop.is_set():
        started = time.perf_counter()
        time.sleep(period)
        lates.append(time.perf_counter() - started - period)
result = lates
"""
    + UNTIL_STDIN_CLOSES
)


def control_ticker(period: float, fifo: bool) -> subprocess.Popen:
    """The ticker in a process of its own, until its stdin closes; it then prints its lateness."""
    return subprocess.Popen(
        [sys.executable, "-c", CONTROL, str(period), str(int(fifo))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def fifo_allowed() -> bool:
    """Whether this process may put a thread under SCHED_FIFO (root or CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (PermissionError, AttributeError):
        return False
    return True


CLIENT = (
    """
import http.client, json, random, sys, threading, time
port, qps, n = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
out, stop, rng = {"http similar": [], "http recommend": []}, threading.Event(), random.Random(1)
def run():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    next_at = time.perf_counter()
    while not stop.is_set():
        next_at += 1 / qps
        time.sleep(max(0.0, next_at - time.perf_counter()))
        picks = [f"i{rng.randrange(n)}" for _ in range(3)]
        similar = len(out["http similar"]) <= len(out["http recommend"])
        started = time.perf_counter()
        if similar:
            connection.request("GET", f"/items/{picks[0]}/similar?k=20")
        else:
            body = json.dumps({"items": picks, "k": 20})
            connection.request("POST", "/recommend", body, {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            out["http similar" if similar else "http recommend"].append(time.perf_counter() - started)
result = out
"""
    + UNTIL_STDIN_CLOSES
)


def serve_http(holder: IndexHolder, port: int) -> uvicorn.Server:
    """The query API over ``holder`` on a thread of its own, as ``http_api.serve`` runs it."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(holder, ApiConfig(), new_registry()), port=port, log_level="warning")
    )
    threading.Thread(target=server.run, name="uvicorn", daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def querier(
    stop: threading.Event, holder: IndexHolder, ids: list[str], qps: float, out: dict[str, list[float]]
) -> None:
    """Alternate ``similar`` and ``recommend`` (a 3-item session) at ``qps``, recording latencies."""
    rng = np.random.default_rng(1)
    next_at = time.perf_counter()
    while not stop.is_set():
        next_at += 1 / qps
        time.sleep(max(0.0, next_at - time.perf_counter()))
        if holder.state is None:
            continue
        picks = [ids[i] for i in rng.integers(0, len(ids), 3)]
        started = time.perf_counter()
        if len(out["similar"]) <= len(out["recommend"]):
            holder.similar(picks[0], 20)
            out["similar"].append(time.perf_counter() - started)
        else:
            holder.recommend(picks, 20)
            out["recommend"].append(time.perf_counter() - started)


def replay(root: Path, versions: int, args: argparse.Namespace, steps: Steps) -> dict:
    """One pass over the chain through a fresh watcher; returns what was measured."""
    pointer = root / LATEST
    pointer.write_text("0\n")  # nothing served yet (no version 0)
    store = SnapshotStore(SnapshotConfig(dir=str(root)))
    holder = IndexHolder(ApiConfig())
    watcher = SnapshotWatcher(store, holder, IndexConfig(api_build_niceness=args.build_niceness), poll_s=3600)
    ticks: list[tuple[float, float]] = []
    latencies: dict[str, list[float]] = {"similar": [], "recommend": []}
    stop = threading.Event()
    period = args.tick_ms / 1000
    where: dict[str, list[float]] = {}
    ticking = (stop, ticks, period, args.fifo, where, args.stall_ms / 1000)
    threads = [threading.Thread(target=ticker, args=ticking, daemon=True)]
    if args.queries:
        ids = [f"i{j}" for j in range(args.full_rows)]
        threads.append(
            threading.Thread(target=querier, args=(stop, holder, ids, args.qps, latencies), daemon=True)
        )
    server = serve_http(holder, args.port) if args.http else None
    client = None
    loads: list[float] = []
    polls: list[float] = []  # when each poll started
    tracer = CallTracer(args.trace_min_ms) if args.trace_c else None

    def run() -> None:
        steps.thread = threading.get_ident()
        if tracer is not None:
            sys.setprofile(tracer)
        for version in range(1, versions + 1):
            pointer.write_text(f"{version}\n")
            started = time.perf_counter()
            swapped = watcher.poll_once()
            loads.append(time.perf_counter() - started)
            polls.append(started)
            if not swapped:
                print(f"  version {version} was not swapped in", flush=True)
            time.sleep(args.gap_s)
        sys.setprofile(None)

    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the ticker's quiet baseline
    quiet_until = time.perf_counter()
    steps.intervals.clear()
    control = control_ticker(period, args.fifo)
    if server is not None:
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(args.port), str(args.qps), str(args.full_rows)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    loader = threading.Thread(target=run, name="replay")
    loader.start()
    loader.join()
    control_lates = json.loads(control.communicate("")[0])
    if client is not None:
        latencies.update(json.loads(client.communicate("")[0]))
        server.should_exit = True
    wait_for_builds(watcher)
    stop.set()
    for thread in threads:
        thread.join()
    pointer.write_text(f"{versions}\n")
    quiet = [late for at, late in ticks if at < quiet_until]
    busy = [(at, late) for at, late in ticks if at >= quiet_until]
    return {
        "quiet": quiet,
        "control": control_lates,
        "ticks": busy,
        "where": where,
        "loads": loads,
        "polls": polls,
        "intervals": list(steps.intervals),
        "latencies": latencies,
        "calls": None if tracer is None else dict(tracer.calls),
        "item_count": holder.state.item_count if holder.state else 0,
    }


def wait_for_builds(watcher: SnapshotWatcher) -> None:
    """Let the watcher's background index builds finish: the next repeat would share the CPUs with
    them, and FAISS threads still running when the interpreter exits crash it."""
    log = getattr(watcher, "_log", None)
    if log is not None:
        log.wait_for_builds(120)
    main = getattr(watcher, "_main", None)
    if main is not None and main.cold.index is not None:
        main.cold.index.wait(120)


# -- the report ------------------------------------------------------------------------------------


def swap_steps(result: dict) -> dict[str, tuple[list[float], list[float]]]:
    """Each step's (wall, CPU) seconds per swap (split where each poll starts)."""
    starts = result["polls"]
    wall: list[dict[str, float]] = [defaultdict(float) for _ in starts]
    cpu: list[dict[str, float]] = [defaultdict(float) for _ in starts]
    for name, _, s, e, c in result["intervals"]:
        swap = int(np.searchsorted(starts, s, side="right")) - 1
        if swap >= 0:
            wall[swap][name] += e - s
            cpu[swap][name] += c
    names = {iv[0] for iv in result["intervals"]}
    return {n: ([w.get(n, 0.0) for w in wall], [c.get(n, 0.0) for c in cpu]) for n in names}


def stall_causes(result: dict, threshold_s: float) -> dict[str, list[float]]:
    """Stalls over ``threshold_s`` by the innermost step running at their middle."""
    intervals = sorted(result["intervals"], key=lambda iv: -iv[1])  # innermost first
    causes: dict[str, list[float]] = defaultdict(list)
    for at, late in result["ticks"]:
        if late < threshold_s:
            continue
        middle = at + late / 2
        name = next(
            (n for n, _, s, e, _ in intervals if s <= middle <= e), "(no step: glue, queries, builds)"
        )
        causes[name].append(late)
    return causes


def summary(result: dict, threshold_s: float) -> dict[str, float]:
    lates = [late for _, late in result["ticks"]]
    control = np.array(result["control"])
    out = {
        "quiet stall p99": percentile_ms(result["quiet"], 99),
        "control stall p99": percentile_ms(result["control"], 99),
        "control stall max": float(control.max()) * 1000 if len(control) else float("nan"),
        "control late >5ms %": 100 * float(np.mean(control > 0.005)) if len(control) else float("nan"),
        "stall p50": percentile_ms(lates, 50),
        "stall p99": percentile_ms(lates, 99),
        "stall p99.9": percentile_ms(lates, 99.9),
        "stall max": max(lates) * 1000 if lates else float("nan"),
        "ticks late >5ms %": 100 * float(np.mean(np.array(lates) > 0.005)) if lates else float("nan"),
        "ticks late >20ms %": 100 * float(np.mean(np.array(lates) > 0.020)) if lates else float("nan"),
        "stalled s over threshold": sum(late for late in lates if late >= threshold_s),
        "load p50": percentile_ms(result["loads"], 50),
        "load p99": percentile_ms(result["loads"], 99),
        "load max": max(result["loads"]) * 1000,
        "load total s": sum(result["loads"]),
    }
    for kind, values in result["latencies"].items():
        if values:
            out[f"{kind} p50"] = percentile_ms(values, 50)
            out[f"{kind} p99"] = percentile_ms(values, 99)
    return out


def _p50(values: list[float]) -> float:
    return percentile_ms(values, 50)


def _p99(values: list[float]) -> float:
    return percentile_ms(values, 99)


def _max(values: list[float]) -> float:
    return max(values) * 1000


def print_repeat(result: dict, args: argparse.Namespace) -> dict[str, float]:
    figures = summary(result, args.stall_ms / 1000)
    print(
        f"  {len(result['loads'])} swaps to {result['item_count']} items, {len(result['ticks'])} ticks: "
        + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
        flush=True,
    )
    print("  per swap, ms: wall p50 / p99 / max, the thread's CPU p50 / p99 / max")
    for name, (wall, cpu) in sorted(swap_steps(result).items()):
        figures_ms = [f(v) for v in (wall, cpu) for f in (_p50, _p99, _max)]
        print(f"    {name:28s}" + "".join(f" {x:8.1f}" for x in figures_ms))
    print(f"  stalls over {args.stall_ms} ms by the step running (count, total ms, max ms):")
    for name, values in sorted(
        stall_causes(result, args.stall_ms / 1000).items(), key=lambda kv: -sum(kv[1])
    ):
        print(f"    {name:32s} {len(values):5d} {sum(values) * 1000:8.1f} {max(values) * 1000:8.1f}")
    print(
        f"  where the other busy threads were after a stall over {args.stall_ms} ms (count, total ms, max ms):"
    )
    for name, values in sorted(result["where"].items(), key=lambda kv: -sum(kv[1]))[: args.where]:
        print(f"    {len(values):5d} {sum(values) * 1000:8.1f} {max(values) * 1000:8.1f}  {name[:400]}")
    if result["calls"]:
        print(f"  the replay thread's C calls over {args.trace_min_ms} ms (count, total ms, max ms):")
        ranked = sorted(result["calls"].items(), key=lambda kv: -sum(kv[1]))[:20]
        for name, values in ranked:
            print(f"    {name[:90]:90s} {len(values):5d} {sum(values) * 1000:8.1f} {max(values) * 1000:8.1f}")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", default="/tmp/recsim-gil-stalls", help="where the chain is written and reused"
    )
    parser.add_argument(
        "--full-rows", type=int, default=100_000, help="rows of the full snapshot (30%% cold)"
    )
    parser.add_argument("--items", type=int, default=1_000_000, help="ids served by the end of the chain")
    parser.add_argument("--cold-rows", type=int, default=30_000, help="new cold rows per listing delta")
    parser.add_argument("--learned-rows", type=int, default=3_000, help="rows per learned delta")
    parser.add_argument("--dim", type=int, default=64, help="learned dimension (content vectors: twice)")
    parser.add_argument("--index-kind", default="hnsw", choices=("hnsw", "ivf"), help="of the full's indexes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=1, help="replays of the chain, each on a fresh watcher"
    )
    parser.add_argument("--gap-s", type=float, default=0.1, help="pause between swaps")
    parser.add_argument("--tick-ms", type=float, default=1.0, help="the ticker's sleep")
    parser.add_argument(
        "--stall-ms", type=float, default=5.0, help="stalls at least this long are attributed"
    )
    parser.add_argument("--queries", action="store_true", help="run a query thread during the replay")
    parser.add_argument("--http", action="store_true", help="query the API over HTTP from another process")
    parser.add_argument("--port", type=int, default=8765, help="of the API with --http")
    parser.add_argument("--qps", type=float, default=200.0, help="queries per second of the query thread")
    parser.add_argument("--switch-interval-ms", type=float, help="sys.setswitchinterval for the replay")
    parser.add_argument(
        "--no-fifo", dest="fifo", action="store_false", help="tickers under the default policy"
    )
    parser.add_argument(
        "--build-niceness", type=int, default=0, help="index.api_build_niceness of the API's own IVF builds"
    )
    parser.add_argument("--where", type=int, default=8, help="stall sites listed (by total stall)")
    parser.add_argument("--trace-c", action="store_true", help="time the replay thread's C calls (slows it)")
    parser.add_argument(
        "--trace-min-ms", type=float, default=2.0, help="C calls at least this long are listed"
    )
    args = parser.parse_args(argv)
    print(f"code: {Path(query.__file__).parent}", flush=True)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    root, versions = ensure_chain(args)
    if args.fifo and not fifo_allowed():
        print("tickers: SCHED_FIFO not allowed here, default policy (other processes delay them too)")
        args.fifo = False
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    steps = Steps()
    instrument(steps)
    results = []
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}:", flush=True)
        results.append(print_repeat(replay(root, versions, args, steps), args))
    print(f"median over {args.repeats} repeats: " + ", ".join(
        f"{k} {statistics.median(r[k] for r in results):.1f}" for k in results[0]
    ))  # fmt: skip
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
