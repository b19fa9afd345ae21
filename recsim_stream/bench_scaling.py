"""``recsim-stream bench scaling``: the per-component cost model (``bench_costs``), a throughput
grid, and the cluster on paper (``sizing``).

Grid: a private broker; the simulator's backlog (``--rate 0``) into an isolated events topic with 4
partitions; then for every (shards, updaters, Ray layout) point and repeat, ``recsim-stream train``
process(es) in a fresh consumer group drain it, and the time from the first trained record to the
last (scraped from the updaters' metrics) gives records/s. Layouts: ``local`` (one updater with its
own in-process Ray, as deployed by default) and ``head`` (a Ray head of our own in its own process
group, joined through ``RECSIM_RAY_ADDRESS``; a second updater gets ``RECSIM_SNAPSHOT_ENABLED=false``).
After a two-updater run, a driver lists the named actors left on the head: shared detached shards
stay (one model), per-updater shards die with their updaters (two separate models); the result
says which happened. Freshness of new items comes from ``bench e2e`` at a fixed rate on the same
broker, once per shard count. Everything started here is stopped by process group and pid, never by name.

The cost model and the grid can be measured in separate runs (``--out``) and combined later, grids of
several runs merged (``merge_grids``), since on a shared machine one long run is rarely possible.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from recsim_stream.bench_costs import Log, measure_costs
from recsim_stream.config import KafkaConfig
from recsim_stream.kafka_io import ensure_topics
from recsim_stream.local_broker import free_port, private_broker
from recsim_stream.processes import PRIVATE_RAY_ENV, Children, ray_head
from recsim_stream.sizing import MILLION, cost_model, plan


class ScalingError(RuntimeError):
    """A grid point died or did not drain its backlog in time."""


@dataclass(frozen=True)
class GridRun:
    """One drain of the backlog by one (shards, updaters, layout) configuration."""

    shards: int
    updaters: int
    layout: str  # "local" (Ray in the updater's process) or "head" (a Ray head joined by address)
    records: int  # the backlog
    drained: int  # records trained after the first scrape that saw any (their time is drain_s)
    drain_s: float  # first scrape that saw a trained record -> every record trained
    startup_s: float  # updater processes started -> first trained record
    load: float  # 1-minute load average when the drain ended
    per_updater: tuple[int, ...] = ()  # records each updater trained
    shared_shards: bool | None = None  # two updaters: one set of named shards on the head?
    snapshot_dirs_written: int = 0  # updaters that published snapshots
    reported: tuple[float, ...] = ()  # records/s each updater's own final line reports

    @property
    def records_per_s(self) -> float:
        return self.drained / self.drain_s if self.drain_s > 0 else 0.0


def summarise_grid(runs: Sequence[GridRun]) -> list[dict]:
    """One row per (layout, updaters, shards): median records/s over repeats, and what the runs saw."""
    groups: dict[tuple[str, int, int], list[GridRun]] = {}
    for run in runs:
        groups.setdefault((run.layout, run.updaters, run.shards), []).append(run)
    rows = []
    for (layout, updaters, shards), group in sorted(groups.items()):
        rows.append(
            {
                "layout": layout,
                "updaters": updaters,
                "shards": shards,
                "records_per_s": round(statistics.median(r.records_per_s for r in group)),
                "runs": [round(r.records_per_s) for r in group],
                "startup_s": round(statistics.median(r.startup_s for r in group), 1),
                "load": [round(r.load, 1) for r in group],
                "per_updater": [list(r.per_updater) for r in group],
                "shared_shards": [r.shared_shards for r in group] if updaters > 1 else None,
                "snapshot_dirs_written": [r.snapshot_dirs_written for r in group],
            }
        )
    return rows


# --- the grid -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridOptions:
    shards: tuple[int, ...] = (1, 2, 4)
    updaters: tuple[int, ...] = (1, 2)
    layouts: tuple[str, ...] = ("local", "head")  # "local" applies to one updater only
    events: int = 200_000
    repeats: int = 2
    point_timeout_s: float = 90.0
    bootstrap: str = ""  # use this broker instead of starting one
    seed: int = 7
    # Seconds of ``bench e2e`` at ``freshness_rate`` events/s per shard count (one updater, Ray in
    # process), for the freshness of new items; 0 = not measured.
    freshness_s: float = 0.0
    freshness_rate: float = 2000.0

    def __post_init__(self) -> None:
        bad = [s for s in (*self.shards, *self.updaters) if s < 1]
        if bad or self.events < 1 or self.repeats < 1 or self.point_timeout_s <= 0 or self.freshness_s < 0:
            raise ValueError(f"bench scaling: invalid grid options {self!r}")
        unknown = set(self.layouts) - {"local", "head"}
        if unknown:
            raise ValueError(f"bench scaling: layouts are local and head, got {sorted(unknown)}")

    def points(self) -> list[tuple[str, int, int]]:
        """(layout, updaters, shards) in run order; ``local`` only with one updater."""
        return [
            (layout, updaters, shards)
            for layout in self.layouts
            for updaters in self.updaters
            if layout == "head" or updaters == 1
            for shards in self.shards
        ]


_CLI = [sys.executable, "-m", "recsim_stream.cli"]
_LIST_ACTORS = (
    "import json, sys, ray\n"
    "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
    "print(json.dumps(ray.util.list_named_actors(all_namespaces=True)))\n"
    "ray.shutdown()\n"
)


def _named_actors(address: str) -> list[dict] | None:
    done = subprocess.run(
        [sys.executable, "-c", _LIST_ACTORS, address],
        capture_output=True, text=True, timeout=60, env={**os.environ, **PRIVATE_RAY_ENV}, check=False,
    )  # fmt: skip
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return None


def reported_rate(log_text: str) -> float:
    """records/s from an updater's ``train: done`` line (first to last record of its own), 0 if none."""
    found = re.findall(r"from first to last record [\d.]+ s: ([\d,]+) records/s", log_text)
    return float(found[-1].replace(",", "")) if found else 0.0


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _trained(ports: Sequence[int]) -> list[float | None]:
    import httpx

    out: list[float | None] = []
    for port in ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text
        except httpx.HTTPError:
            out.append(None)
            continue
        out.append(
            _metric(text, "recsim_events_trained_total") + _metric(text, "recsim_events_dead_lettered_total")
        )
    return out


def produce_backlog(kafka: KafkaConfig, options: GridOptions, children: Children, log: Log) -> int:
    """``recsim-stream simulate --rate 0`` into the isolated topics; returns the events produced."""
    ensure_topics(kafka)
    children.start(
        "simulate",
        [*_CLI, "simulate", "--events", str(options.events), "--rate", "0", "--seed", str(options.seed),
         "--kafka-bootstrap", kafka.bootstrap, "--kafka-events-topic", kafka.events_topic,
         "--kafka-items-topic", kafka.items_topic, "--kafka-dlq-topic", kafka.dlq_topic, "--json"],
    ).wait(timeout=600)  # fmt: skip
    summary = json.loads(children.log("simulate").strip().splitlines()[-1])
    del children.procs["simulate"]
    log(f"bench scaling: backlog of {summary['events']:,} events at {summary['events_per_s']:,.0f} events/s")
    return int(summary["events"])


def run_point(
    kafka: KafkaConfig, events: int, point: tuple[str, int, int], options: GridOptions, folder: Path, log: Log
) -> GridRun:
    """Drain the backlog once with a fresh group: (layout, updaters, shards)."""
    layout, updaters, shards = point
    run_dir = Path(tempfile.mkdtemp(prefix=f"{layout}-{updaters}u-{shards}s-", dir=folder))
    children = Children(run_dir)
    group = f"scaling-{uuid.uuid4().hex[:10]}"
    try:
        with ray_head(children) if layout == "head" else _no_head() as address:
            ports = [free_port() for _ in range(updaters)]
            started = time.monotonic()
            for i, port in enumerate(ports):
                env = dict(PRIVATE_RAY_ENV)
                if address:
                    env["RECSIM_RAY_ADDRESS"] = address
                if i > 0:
                    env["RECSIM_SNAPSHOT_ENABLED"] = "false"
                children.start(
                    f"updater-{i}",
                    [*_CLI, "train", "--kafka-bootstrap", kafka.bootstrap,
                     "--kafka-events-topic", kafka.events_topic, "--kafka-items-topic", kafka.items_topic,
                     "--kafka-dlq-topic", kafka.dlq_topic, "--kafka-group-id", group,
                     "--shards", str(shards), "--metrics-port", str(port), "--idle-exit-s", "5",
                     "--snapshot-dir", str(run_dir / f"snapshots-{i}"),
                     "--checkpoint-dir", str(run_dir / "checkpoints")],
                    env=env,
                )  # fmt: skip
            first, first_total, done_at, per = _watch_drain(
                children, ports, events, started, options.point_timeout_s
            )
            actors = _named_actors(address) if address and updaters > 1 else None
            for i in range(updaters):
                proc = children.procs[f"updater-{i}"]
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    children.stop(f"updater-{i}")
            shared = None
            if actors is not None:
                shard_actors = [a for a in actors if "-shard-" in str(a.get("name", ""))]
                shared = len(shard_actors) == shards
                log(f"bench scaling:   named actors on the head after the run: {actors}")
            reported = tuple(reported_rate(children.log(f"updater-{i}")) for i in range(updaters))
            written = sum(1 for i in range(updaters) if any((run_dir / f"snapshots-{i}").glob("LATEST")))
            run = GridRun(shards, updaters, layout, events, events - first_total, done_at - first, first - started,
                          os.getloadavg()[0], tuple(int(p) for p in per), shared, written, reported)  # fmt: skip
    except BaseException:
        log(f"bench scaling: the logs of the failed point {point} are kept in {run_dir}")
        children.stop_all()
        raise
    children.stop_all()
    shutil.rmtree(run_dir, ignore_errors=True)
    return run


@contextmanager
def _no_head() -> Iterator[str]:
    yield ""


def _watch_drain(
    children: Children, ports: Sequence[int], events: int, started: float, timeout_s: float
) -> tuple[float, int, float, list[float]]:
    """Scrape the updaters until they have handled ``events`` records: (time of the first scrape that
    saw trained records, how many it saw, time all were done, per-updater totals). Records count as a
    whole poll (up to kafka.max_poll_records) at once, so the rate is taken from the first scrape on;
    a scrape every 0.25 s bounds each time's error to that."""
    first: float | None = None
    first_total = 0
    last_seen = [0.0] * len(ports)
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.monotonic()
        for i, value in enumerate(_trained(ports)):
            if value is not None:
                last_seen[i] = value
        total = sum(last_seen)
        if first is None and total > 0:
            first, first_total = now, int(total)
        if total >= events:
            return first if first is not None else now, first_total, now, last_seen
        for name, proc in children.procs.items():
            if name.startswith("updater") and proc.poll() is not None:
                raise ScalingError(
                    f"{name} exited (status {proc.returncode}) after {total:,.0f} of {events:,} records; "
                    f"its last output:\n{children.log(name)[-3000:]}"
                )
        if now > deadline:
            raise ScalingError(f"{total:,.0f} of {events:,} records trained within {timeout_s:.0f} s")
        time.sleep(0.25)


def run_grid(options: GridOptions, log: Log) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="recsim-scaling-grid-"))
    runs: list[GridRun] = []
    children = Children(folder)
    try:
        with _broker(options.bootstrap, folder) as bootstrap:
            kafka = KafkaConfig.isolated(bootstrap, "scaling", partitions=4)
            events = produce_backlog(kafka, options, children, log)
            points = options.points()
            freshness = (
                [measure_freshness(bootstrap, shards, options, log) for shards in options.shards]
                if options.freshness_s
                else []
            )
            for repeat in range(options.repeats):
                for point in points:
                    run = run_point(kafka, events, point, options, folder, log)
                    runs.append(run)
                    log(
                        f"bench scaling: [{repeat + 1}/{options.repeats}] {point[0]}, {point[1]} updater(s), "
                        f"{point[2]} shard(s): {run.records_per_s:,.0f} records/s (drain {run.drain_s:.1f} s, "
                        f"startup {run.startup_s:.1f} s, load {run.load:.1f}, per updater {run.per_updater}, "
                        f"shared shards {run.shared_shards}, snapshot dirs written {run.snapshot_dirs_written}, "
                        f"updaters' own rates {run.reported})"
                    )
    finally:
        children.stop_all()
        shutil.rmtree(folder, ignore_errors=True)
    return {"events": events, "runs": [asdict(r) | {"records_per_s": r.records_per_s} for r in runs],
            "summary": summarise_grid(runs), "freshness": freshness}  # fmt: skip


@contextmanager
def _child_env(values: dict[str, str]) -> Iterator[None]:
    """``values`` in the environment the children started meanwhile inherit (bench e2e starts its
    services with this process's environment); restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure_freshness(bootstrap: str, shards: int, options: GridOptions, log: Log) -> dict:
    """``bench e2e`` on our broker with ``shards`` shards: wall-clock freshness of new items."""
    from recsim_stream.bench_e2e import E2EOptions
    from recsim_stream.bench_e2e import run as run_e2e

    e2e = E2EOptions(rate=options.freshness_rate, duration=options.freshness_s, qps=10.0, bootstrap=bootstrap,
                     seed=options.seed)  # fmt: skip
    with _child_env({"RECSIM_LEARN_SHARDS": str(shards)}):
        result = run_e2e(e2e, lambda line: log(f"  [{shards} shards] {line}"))
    keys = ("ingest_events_per_s", "freshness_measured", "freshness_unresolved", "freshness_p50_s",
            "freshness_p95_s", "query_p50_ms", "query_p99_ms", "load_average_1m")  # fmt: skip
    row = {"shards": shards, "rate": options.freshness_rate, "duration_s": options.freshness_s}
    row |= {key: result.get(key) for key in keys}
    log(f"bench scaling: freshness with {shards} shard(s): {row}")
    return row


@contextmanager
def _broker(bootstrap: str, folder: Path) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with private_broker(folder / "kafka") as started:
        yield started


def plot_grid(rows: Sequence[dict], path: str) -> None:
    """Median records/s against shards, one line per (layout, updaters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        lines.setdefault((row["layout"], row["updaters"]), []).append(row)
    for (layout, updaters), points in sorted(lines.items()):
        points.sort(key=lambda r: r["shards"])
        label = f"{updaters} updater{'s' if updaters > 1 else ''}, Ray {'in process' if layout == 'local' else 'head'}"
        ax.plot([p["shards"] for p in points], [p["records_per_s"] for p in points], marker="o", label=label)
        for p in points:
            ax.scatter(
                [p["shards"]] * len(p["runs"]), p["runs"], s=10, alpha=0.4, color=ax.lines[-1].get_color()
            )
    ax.set_xlabel("parameter-server shards")
    ax.set_xticks(sorted({r["shards"] for r in rows}))
    ax.set_ylabel("records/s to drain the backlog")
    ax.set_ylim(bottom=0)
    ax.set_title("Updater throughput on 2 shared cores (median line, runs as dots)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_grids(grids: Sequence[dict]) -> dict:
    """Several runs of the grid (``run_grid`` results) as one: their runs together, summarised again."""
    runs = [run for grid in grids for run in grid["runs"]]
    fields = {f for f in GridRun.__dataclass_fields__}
    summary = summarise_grid([GridRun(**{k: v for k, v in run.items() if k in fields}) for run in runs])
    return {
        "events": sorted({grid["events"] for grid in grids}),
        "runs": runs,
        "summary": summary,
        "freshness": [row for grid in grids for row in grid.get("freshness", [])],
    }


def run(
    log: Log,
    *,
    costs: bool = True,
    costs_from: str = "",
    grid: GridOptions | None = None,
    grid_from: str = "",
    stage_events: int = 200_000,
    repeats: int = 3,
    sizes: Sequence[int] = (100_000, MILLION),
    index_kind: str = "hnsw",
    plot: str = "",
    out: str = "",
) -> dict:
    """The cost model and the grid, each measured or read from an earlier ``--out`` file, and the
    sizing from both."""
    result: dict = {"started_load_1m": os.getloadavg()[0]}
    if costs:
        result["costs"] = measure_costs(stage_events, repeats, sizes, log, index_kind)
    elif costs_from:
        result["costs"] = json.loads(Path(costs_from).read_text())["costs"]
    if grid is not None:
        result["grid"] = run_grid(grid, log)
        if plot:
            plot_grid(result["grid"]["summary"], plot)
            log(f"bench scaling: wrote {plot}")
    elif grid_from:
        result["grid"] = merge_grids([json.loads(Path(p).read_text())["grid"] for p in grid_from.split(",")])
        if plot:
            plot_grid(result["grid"]["summary"], plot)
            log(f"bench scaling: wrote {plot}")
    if "costs" in result:
        result["costs"]["model"] = asdict(cost_model(result["costs"]))
        result["plan"] = plan(result["costs"], result.get("grid", {}).get("summary"))
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
        log(f"bench scaling: wrote {out}")
    return result
