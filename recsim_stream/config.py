"""One typed configuration for every service.

Precedence: dataclass defaults < environment (``RECSIM_<SECTION>_<FIELD>``) < CLI flags.
This is the only module that reads ``os.environ``. Each section validates itself in
``__post_init__`` so a bad value fails at start-up with the name of the setting, not deep in a loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ENV_PREFIX = "RECSIM_"


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the setting."""


def _require(ok: bool, setting: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}: {message}")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    events_topic: str = "events"
    items_topic: str = "items"
    dlq_topic: str = "events-dlq"
    partitions: int = 4
    group_id: str = "recsim-updater"
    # Upper bound on records one poll returns; the updater's batch size on the Kafka side.
    max_poll_records: int = 20000
    poll_timeout_ms: int = 200

    def __post_init__(self) -> None:
        _require(bool(self.bootstrap), "kafka.bootstrap", "must name at least one host:port")
        _require(self.partitions >= 1, "kafka.partitions", f"must be >= 1, got {self.partitions}")
        _require(self.max_poll_records >= 1, "kafka.max_poll_records", "must be >= 1")


@dataclass(frozen=True)
class EventLimits:
    """What the record decoder accepts (see events.py)."""

    max_id_bytes: int = 128
    min_ts: float = 0.0
    max_ts: float = 4_102_444_800.0  # 2100-01-01
    max_record_bytes: int = 4096

    def __post_init__(self) -> None:
        _require(self.max_id_bytes >= 1, "limits.max_id_bytes", "must be >= 1")
        _require(self.min_ts < self.max_ts, "limits.min_ts", "must be below limits.max_ts")


@dataclass(frozen=True)
class SimConfig:
    """The simulator (recsim_stream/sim): catalogue, users, sessions, drift."""

    seed: int = 7
    events: int = 0  # stop after this many events (0 = no limit)
    duration: float = 0.0  # stop after this many wall seconds (0 = no limit)
    rate: float = 2000.0  # events per wall second (0 = as fast as possible)
    items: int = 5000  # initial catalogue size
    clusters: int = 50
    users: int = 2000
    new_items_per_1k_events: float = 2.0  # items listed while the stream runs
    drift_per_1k_events: float = 0.02  # probability a user's interest moves, per 1k events
    popularity_skew: float = 1.1  # Zipf exponent of item popularity within a cluster
    out: str = ""  # write canonical CSV to this folder instead of Kafka

    def __post_init__(self) -> None:
        _require(self.events >= 0, "sim.events", "must be >= 0")
        _require(self.rate >= 0, "sim.rate", "must be >= 0 (0 = as fast as possible)")
        _require(self.items >= 1, "sim.items", "must be >= 1")
        _require(1 <= self.clusters <= self.items, "sim.clusters", "must be between 1 and sim.items")
        _require(self.users >= 1, "sim.users", "must be >= 1")


@dataclass(frozen=True)
class SessionConfig:
    gap_s: float = 1800.0  # inactivity that ends a session
    allowed_lateness_s: float = 60.0  # how far behind the watermark an event may arrive
    max_events: int = 200
    max_duration_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        _require(self.gap_s > 0, "sessions.gap_s", "must be > 0")
        _require(self.allowed_lateness_s >= 0, "sessions.allowed_lateness_s", "must be >= 0")
        _require(self.max_events >= 2, "sessions.max_events", "must be >= 2")


@dataclass(frozen=True)
class PairConfig:
    window: int = 5
    click_weight: float = 1.0
    cart_weight: float = 1.5
    purchase_weight: float = 2.0
    # Weight of the pairs between a purchased (or carted) item and every item of its session.
    purchase_context_weight: float = 1.0
    cart_context_weight: float = 0.5

    def __post_init__(self) -> None:
        _require(self.window >= 1, "pairs.window", "must be >= 1")


@dataclass(frozen=True)
class LearnConfig:
    dim: int = 64
    negatives: int = 5
    learning_rate: float = 0.1  # Adagrad base step
    sampler_power: float = 0.75
    shards: int = 2
    batch_pairs: int = 8192  # pairs per pull/step/push round trip
    seed: int = 13
    expire_after_s: float = 0.0  # rows untouched this long (event time) expire; 0 = never
    torch_threads: int = 1  # pinned: 2 threads collapse when another process takes a core

    def __post_init__(self) -> None:
        _require(1 <= self.dim <= 1024, "learn.dim", "must be between 1 and 1024")
        _require(self.negatives >= 1, "learn.negatives", "must be >= 1")
        _require(self.learning_rate > 0, "learn.learning_rate", "must be > 0")
        _require(self.shards >= 1, "learn.shards", "must be >= 1")
        _require(self.batch_pairs >= 1, "learn.batch_pairs", "must be >= 1")


@dataclass(frozen=True)
class SnapshotConfig:
    dir: str = "var/snapshots"
    interval_s: float = 2.0
    keep: int = 5

    def __post_init__(self) -> None:
        _require(self.interval_s > 0, "snapshot.interval_s", "must be > 0")
        _require(self.keep >= 1, "snapshot.keep", "must be >= 1")


@dataclass(frozen=True)
class IndexConfig:
    exact_below: int = 50_000  # catalogues smaller than this get an exact (flat) index
    kind: str = "hnsw"  # hnsw | ivf, above the threshold
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 16
    recall_gate: float = 0.9  # refuse to publish an index whose recall@20 on a sample is below this
    recall_sample: int = 200

    def __post_init__(self) -> None:
        _require(self.kind in ("hnsw", "ivf"), "index.kind", f"must be hnsw or ivf, got {self.kind!r}")
        _require(0.0 <= self.recall_gate <= 1.0, "index.recall_gate", "must be within [0, 1]")


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_k: int = 1000
    max_body_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "api.port", "must be a TCP port")


@dataclass(frozen=True)
class ContentConfig:
    enabled: bool = True
    encoder: str = "hashed"  # minilm | hashed (character n-grams; no model weights needed)
    hashed_dim: int = 2048

    def __post_init__(self) -> None:
        _require(self.encoder in ("minilm", "hashed"), "content.encoder", "must be minilm or hashed")


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = start a local Ray instance in this process; else ray://host:port or auto
    num_cpus: int = 2
    object_store_mb: int = 512

    def __post_init__(self) -> None:
        _require(self.num_cpus >= 1, "ray.num_cpus", "must be >= 1")
        _require(self.object_store_mb >= 78, "ray.object_store_mb", "Ray needs at least 78 MB")


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0  # 0 = do not expose /metrics from this process


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    limits: EventLimits = field(default_factory=EventLimits)
    sim: SimConfig = field(default_factory=SimConfig)
    sessions: SessionConfig = field(default_factory=SessionConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))


def _field_type(section_cls: type, name: str) -> type:
    hint = typing.get_type_hints(section_cls)[name]
    if isinstance(hint, types.UnionType):  # e.g. float | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _parse(value: str, kind: type, setting: str) -> object:
    if kind is bool:
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{setting}: expected true/false, got {value!r}")
    try:
        return kind(value)
    except ValueError as exc:
        raise ConfigError(f"{setting}: expected {kind.__name__}, got {value!r}") from exc


def env_name(section: str, name: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{name.upper()}"


def flag_name(section: str, name: str, primary: str | None) -> str:
    """``--rate`` for the command's own section, ``--kafka-bootstrap`` for the others."""
    stem = name if section == primary else f"{section}-{name}"
    return "--" + stem.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser, sections: Iterable[str], primary: str | None = None
) -> None:
    """Add one flag per setting of ``sections``; help shows the env variable and the default."""
    defaults = Config()
    for section in sections:
        group = parser.add_argument_group(f"{section} settings")
        section_obj = getattr(defaults, section)
        for f in dataclasses.fields(section_obj):
            dest = f"cfg__{section}__{f.name}"
            default = getattr(section_obj, f.name)
            group.add_argument(
                flag_name(section, f.name, primary),
                dest=dest,
                default=None,
                metavar=_field_type(type(section_obj), f.name).__name__.upper(),
                help=f"env {env_name(section, f.name)}, default {default!r}",
            )


def load_config(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from defaults, then ``environ`` (default: os.environ), then parsed CLI ``args``."""
    environ = os.environ if environ is None else environ
    cli = vars(args) if args is not None else {}
    sections = {}
    for section in SECTIONS:
        section_cls = _field_type(Config, section)
        values = {}
        for f in dataclasses.fields(section_cls):
            setting = f"{section}.{f.name}"
            kind = _field_type(section_cls, f.name)
            raw = cli.get(f"cfg__{section}__{f.name}")
            if raw is None:
                raw = environ.get(env_name(section, f.name))
            if raw is not None:
                values[f.name] = _parse(str(raw), kind, setting)
        sections[section] = section_cls(**values)
    return Config(**sections)
