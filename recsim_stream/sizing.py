"""The cluster on paper: per-core rates and per-item sizes (``CostModel``) turned into the cluster a
target load needs (``size_cluster``), with every assumption a field of ``Target``.

Pure arithmetic, no I/O: ``bench_costs`` measures the cost model and ``bench_scaling`` the grid
that calibrates it (``plan``). Build time is extrapolated linearly only when the per-million cost
stayed flat between two measured sizes; otherwise by the power law through the two points
(``extrapolate``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

MILLION = 1_000_000


def rates(count: float, seconds: Sequence[float]) -> list[float]:
    """``count`` per second for each timed run."""
    return [count / s if s > 0 else float("inf") for s in seconds]


def growth_exponent(small: tuple[int, float], large: tuple[int, float]) -> float:
    """b in t = a * n^b through two (rows, seconds) points: 1.0 is linear."""
    (n1, t1), (n2, t2) = small, large
    if n1 <= 0 or n2 <= n1 or t1 <= 0 or t2 <= 0:
        raise ValueError(f"growth_exponent: expected 0 < n1 < n2 and positive times, got {small}, {large}")
    return math.log(t2 / t1) / math.log(n2 / n1)


def extrapolate(
    small: tuple[int, float], large: tuple[int, float], rows: int, tolerance: float = 0.1
) -> float:
    """Seconds at ``rows`` from two measured points: linear from the larger one when the exponent is
    within ``tolerance`` of 1 (shown to be linear), else along the fitted power law (never below linear)."""
    b = growth_exponent(small, large)
    n2, t2 = large
    exponent = 1.0 if abs(b - 1.0) <= tolerance else max(b, 1.0)
    return t2 * (rows / n2) ** exponent


@dataclass(frozen=True)
class CostModel:
    """Per-core rates and per-item sizes, as measured by ``bench_costs.measure_costs``."""

    decode_events_per_s: float
    sessions_events_per_s: float
    pairs_events_per_s: float  # pair generation alone (beyond the session windows)
    pairs_per_event: float
    sgns_pairs_per_s: float  # trainer step: sample, pull, SGNS, push on in-process shards
    shard_bytes_per_item: float  # shard tables as allocated (capacity doubles: up to 2x of used)
    updater_bytes_per_item: float  # the updater's id <-> key maps and negative-sampler state
    snapshot_bytes_per_item: float
    index_bytes_per_item: float  # the two shipped indexes (similar + recommend)
    snapshot_write: tuple[tuple[int, float], ...]  # (rows, wall seconds) per measured size
    index_build: tuple[tuple[int, float], ...]  # (rows, CPU seconds, one build thread) per measured size
    search: tuple[tuple[int, float], ...]  # (rows, searches/s on one thread, k=20) per measured size

    def core_seconds_per_event(self) -> dict[str, float]:
        """Seconds of one core each stage spends per event."""
        return {
            "decode": 1.0 / self.decode_events_per_s,
            "sessions": 1.0 / self.sessions_events_per_s,
            "pairs": 1.0 / self.pairs_events_per_s,
            "sgns": self.pairs_per_event / self.sgns_pairs_per_s,
        }

    def searches_per_s_at(self, rows: int) -> float:
        """Searches/s at ``rows``, along the power law through the two largest sizes (never rising)."""
        points = sorted(self.search)
        if len(points) < 2:
            return points[0][1]
        (n1, q1), (n2, q2) = points[-2:]
        return q2 * (rows / n2) ** min(0.0, math.log(q2 / q1) / math.log(n2 / n1))

    def seconds_at(self, which: str, rows: int) -> float:
        """Snapshot write or index build seconds at ``rows``, from the two largest measured sizes."""
        points = sorted(self.snapshot_write if which == "snapshot_write" else self.index_build)
        if len(points) < 2:
            ((n, t),) = points
            return t * rows / n
        return extrapolate(points[-2], points[-1], rows)


def cost_model(costs: dict) -> CostModel:
    """The model from the raw measurements of ``bench_costs.measure_costs`` (medians, the largest
    build's sizes)."""
    stages, builds = costs["stages"], sorted(costs["builds"], key=lambda b: b["rows"])
    return CostModel(
        decode_events_per_s=statistics.median(stages["decode_events_per_s"]),
        sessions_events_per_s=statistics.median(stages["sessions_events_per_s"]),
        pairs_events_per_s=statistics.median(stages["pairs_events_per_s"]),
        pairs_per_event=stages["pairs_per_event"],
        sgns_pairs_per_s=statistics.median(stages["sgns_pairs_per_s"]),
        shard_bytes_per_item=costs["memory"]["shard_bytes_per_item"],
        updater_bytes_per_item=costs["memory"]["updater_bytes_per_item"],
        snapshot_bytes_per_item=builds[-1]["snapshot_bytes_per_item"],
        index_bytes_per_item=builds[-1]["index_bytes_per_item"],
        # Wall time for the write (fsync-bound), CPU time for the build (compute-bound).
        snapshot_write=tuple((b["rows"], b["snapshot_write_wall_s"]) for b in builds),
        index_build=tuple((b["rows"], b["index_build_s"]) for b in builds),
        search=tuple((b["rows"], b["search_queries_per_s"]) for b in builds),
    )


def updater_efficiency(cost: CostModel, measured_records_per_s: float) -> float:
    """Measured updater rate over what one core would do running the four stages in process: the
    share left after what the cost model does not count (Kafka fetches, Ray transport, commits,
    snapshots, checkpoints, the content tower) and after other processes' share of the core."""
    return measured_records_per_s * sum(cost.core_seconds_per_event().values())


@dataclass(frozen=True)
class Target:
    """The load to size for, and the assumptions the sizing makes (each one stated in SCALING.md)."""

    items: int = 10_000_000
    events_per_s: float = 100_000.0
    utilisation: float = 0.5  # share of a core's measured rate planned for: bursts, GC, co-tenants
    ray_efficiency: float = 1.0  # measured updater rate / in-process prediction (transport overhead)
    memory_headroom: float = 2.0  # table doubling, checkpoint copies of the tables
    node_memory_gb: float = 32.0  # memory a shard node gives its shard actors
    full_rebuild_every_s: float = 3600.0  # a full snapshot + index rebuild this often
    queries_per_s: float = 2000.0
    min_replicas: int = 2  # query API replicas for availability
    partitions_per_updater: int = 2  # room to double the updaters without re-partitioning
    bytes_per_event: float = 75.0  # msgpack record (BENCHMARKS.md)

    def __post_init__(self) -> None:
        for name in ("items", "events_per_s", "utilisation", "ray_efficiency", "memory_headroom"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Target.{name}: expected > 0, got {getattr(self, name)!r}")
        if self.utilisation > 1 or self.ray_efficiency > 1.5:
            raise ValueError(
                f"Target: expected utilisation <= 1 and ray_efficiency <= 1.5, got "
                f"{self.utilisation} and {self.ray_efficiency}"
            )


@dataclass(frozen=True)
class Sizing:
    cores: dict[str, float]  # per stage, at the planned utilisation
    updaters: int  # single-threaded updater processes (each runs all four stages for its partitions)
    partitions: int
    shard_memory_gb: float  # all shards, with headroom
    shard_nodes: int
    updater_memory_gb: float  # per updater: the id maps and sampler of every item it sees
    snapshot_write_s: float
    index_build_s: float
    index_builders: int  # single-threaded builds needed to finish one full rebuild per interval
    searches_per_s: float  # one thread, at the target's items
    replica_memory_gb: float  # one query API replica: snapshot arrays + indexes
    replicas: int
    kafka_mb_per_s: float


def size_cluster(cost: CostModel, target: Target) -> Sizing:
    """The cluster ``target`` needs according to ``cost`` (pure arithmetic; see Target's fields)."""
    per_event = cost.core_seconds_per_event()
    planned = target.utilisation * target.ray_efficiency
    cores = {stage: target.events_per_s * s / planned for stage, s in per_event.items()}
    updaters = math.ceil(sum(cores.values()))
    gb = 1024**3
    shard_memory = target.items * cost.shard_bytes_per_item * target.memory_headroom / gb
    write_s = cost.seconds_at("snapshot_write", target.items)
    build_s = cost.seconds_at("index_build", target.items)
    search_rate = cost.searches_per_s_at(target.items)
    replicas = max(target.min_replicas, math.ceil(target.queries_per_s / (search_rate * target.utilisation)))
    return Sizing(
        cores={k: round(v, 2) for k, v in cores.items()},
        updaters=updaters,
        partitions=updaters * target.partitions_per_updater,
        shard_memory_gb=round(shard_memory, 1),
        shard_nodes=max(1, math.ceil(shard_memory / target.node_memory_gb)),
        updater_memory_gb=round(target.items * cost.updater_bytes_per_item / gb, 2),
        snapshot_write_s=round(write_s, 1),
        index_build_s=round(build_s, 1),
        index_builders=max(1, math.ceil((write_s + build_s) / target.full_rebuild_every_s)),
        searches_per_s=round(search_rate),
        replica_memory_gb=round(
            target.items * (cost.snapshot_bytes_per_item + cost.index_bytes_per_item) / gb, 1
        ),
        replicas=replicas,
        kafka_mb_per_s=round(target.events_per_s * target.bytes_per_event / 1e6, 2),
    )


def best_single_updater(grid_summary: Sequence[dict]) -> dict | None:
    """The fastest one-updater row of the grid: the calibration point of the sizing."""
    rows = [row for row in grid_summary if row["updaters"] == 1]
    return max(rows, key=lambda row: row["records_per_s"]) if rows else None


def plan(costs: dict, grid_summary: Sequence[dict] | None, target: Target | None = None) -> dict:
    """The sizing from the measurements of ``bench_costs.measure_costs``, calibrated by the grid's best
    one-updater rate when there is one (else the in-process rates, which are optimistic)."""
    cost = cost_model(costs)
    target = target or Target()
    best = best_single_updater(grid_summary or [])
    if best is not None:
        efficiency = updater_efficiency(cost, best["records_per_s"])
        target = replace(target, ray_efficiency=round(min(efficiency, 1.0), 3))
    return {
        "target": asdict(target),
        "calibrated_on": best,
        "in_process_events_per_s_per_core": 1.0 / sum(cost.core_seconds_per_event().values()),
        "sizing": asdict(size_cluster(cost, target)),
    }
