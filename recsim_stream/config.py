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
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from recsim_stream.threads import ThreadPriority

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
    # Longest gap between two polls before the group evicts the updater, and how long a rebalance
    # waits for it to rejoin: one poll's training (~1-3 s at 20k records) plus a snapshot export
    # must fit many times over, or a slow batch turns into a rebalance storm.
    max_poll_interval_ms: int = 300_000
    # How long the group waits for a silent member (a killed updater) before giving its partitions
    # to others. kafka-python's own default is 45 s, which a restart after a crash would wait out.
    session_timeout_ms: int = 10_000
    # Static membership (KIP-345): a restarted updater with the same id takes its partitions back at
    # once, without a rebalance. One distinct id per updater replica; empty = dynamic membership.
    group_instance_id: str = ""
    # Producer batching: fewer, larger batches mean fewer sender wake-ups and requests competing with
    # the sending thread for the GIL; measured ~1.2x kafka-python's own 0 ms / 16 KiB (kafka_io.py).
    producer_linger_ms: int = 5
    producer_batch_bytes: int = 65536
    # Longest wait between two attempts to reach a broker that went away, in kafka-python's reconnects
    # and in kafka_io's own waits: kafka-python's 30 s default left the updater idle for up to 30 s
    # after the broker was back (measured: 26-33 s; 0.8-2.3 s with 1 s); 1 s costs a refused
    # connection a second while it is down.
    reconnect_backoff_max_ms: int = 1000
    # How long one commit may wait for an unreachable broker before the updater is told to retry it
    # with the next poll (kafka-python retries within it); bounds how long a stop waits in an outage.
    commit_timeout_ms: int = 5000
    # Records the producer holds unacknowledged before send() blocks: kafka-python 3 has no bound of
    # its own (no buffer_memory), so during an outage memory would grow with every record sent.
    producer_max_unacked: int = 100_000

    @classmethod
    def isolated(cls, bootstrap: str, prefix: str, **settings: object) -> KafkaConfig:
        """Topics and a consumer group of its own, named ``<prefix>-events-<random>`` and so on: for a
        test, benchmark or drill sharing a broker with others."""
        suffix = uuid.uuid4().hex[:10]
        return cls(
            bootstrap=bootstrap,
            events_topic=f"{prefix}-events-{suffix}",
            items_topic=f"{prefix}-items-{suffix}",
            dlq_topic=f"{prefix}-dlq-{suffix}",
            group_id=f"{prefix}-{suffix}",
            **settings,
        )

    def __post_init__(self) -> None:
        _require(bool(self.bootstrap), "kafka.bootstrap", "must name at least one host:port")
        _require(self.partitions >= 1, "kafka.partitions", f"must be >= 1, got {self.partitions}")
        _require(self.max_poll_records >= 1, "kafka.max_poll_records", "must be >= 1")
        _require(
            self.max_poll_interval_ms >= 10_000,
            "kafka.max_poll_interval_ms",
            f"must be >= 10000 (one poll's training must fit), got {self.max_poll_interval_ms}",
        )
        _require(
            6_000 <= self.session_timeout_ms <= self.max_poll_interval_ms,
            "kafka.session_timeout_ms",
            f"must be within [6000, max_poll_interval_ms] (the broker's minimum), got {self.session_timeout_ms}",
        )
        _require(self.producer_linger_ms >= 0, "kafka.producer_linger_ms", "must be >= 0")
        _require(self.producer_batch_bytes >= 1024, "kafka.producer_batch_bytes", "must be >= 1024")
        _require(
            100 <= self.reconnect_backoff_max_ms <= 60_000,
            "kafka.reconnect_backoff_max_ms",
            f"must be within [100, 60000], got {self.reconnect_backoff_max_ms}",
        )
        _require(self.commit_timeout_ms >= 100, "kafka.commit_timeout_ms", "must be >= 100")
        _require(self.producer_max_unacked >= 1000, "kafka.producer_max_unacked", "must be >= 1000")


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
    # Items taken off the catalogue while the stream runs (a tombstone on items; never a cluster's
    # last item). Sessions already under way may still click one.
    retired_items_per_1k_events: float = 0.0
    drift_per_1k_events: float = 0.02  # probability a user's interest moves, per 1k events
    popularity_skew: float = 1.1  # Zipf exponent of item popularity within a cluster
    out: str = ""  # write canonical CSV to this folder instead of Kafka
    interests_per_user: int = 3  # most clusters one user is interested in at a time
    session_events: float = 6.0  # mean events per session
    max_session_events: int = 50
    off_cluster: float = 0.1  # share of clicks outside the session's cluster
    repeat_view: float = 0.15  # chance an event repeats the previous item (real streams do this)
    cart_share: float = 0.02  # share of events that are carts
    purchase_share: float = 0.015  # share of events that are purchases
    dwell_median_s: float = 20.0  # event time between a user's events inside a session
    # A user's sessions are separated by more than session_gap_s (keep it >= sessions.gap_s, so the
    # session windows cut where the simulator does) plus an exponential gap of this mean.
    session_gap_s: float = 1800.0
    session_gap_mean_s: float = 3600.0

    def __post_init__(self) -> None:
        _require(self.events >= 0, "sim.events", "must be >= 0")
        _require(self.rate >= 0, "sim.rate", "must be >= 0 (0 = as fast as possible)")
        _require(self.items >= 1, "sim.items", "must be >= 1")
        _require(1 <= self.clusters <= self.items, "sim.clusters", "must be between 1 and sim.items")
        _require(self.users >= 1, "sim.users", "must be >= 1")
        _require(self.new_items_per_1k_events >= 0, "sim.new_items_per_1k_events", "must be >= 0")
        _require(self.retired_items_per_1k_events >= 0, "sim.retired_items_per_1k_events", "must be >= 0")
        _require(0 <= self.drift_per_1k_events <= 1, "sim.drift_per_1k_events", "must be within [0, 1]")
        _require(self.popularity_skew >= 0, "sim.popularity_skew", "must be >= 0")
        _require(self.interests_per_user >= 1, "sim.interests_per_user", "must be >= 1")
        _require(self.max_session_events >= 2, "sim.max_session_events", "must be >= 2")
        _require(
            1 <= self.session_events <= self.max_session_events,
            "sim.session_events",
            "must be between 1 and sim.max_session_events",
        )
        for name in ("off_cluster", "repeat_view", "cart_share", "purchase_share"):
            _require(0 <= getattr(self, name) < 1, f"sim.{name}", "must be within [0, 1)")
        _require(
            self.cart_share + self.purchase_share + self.repeat_view < 0.9,
            "sim.cart_share",
            "cart_share + purchase_share + repeat_view must stay below 0.9",
        )
        _require(self.dwell_median_s > 0, "sim.dwell_median_s", "must be > 0")
        _require(self.session_gap_s > 0, "sim.session_gap_s", "must be > 0")
        _require(self.session_gap_mean_s >= 0, "sim.session_gap_mean_s", "must be >= 0")


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
        _require(
            self.max_duration_s > 0, "sessions.max_duration_s", f"must be > 0, got {self.max_duration_s}"
        )


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
        for name in (
            "click_weight",
            "cart_weight",
            "purchase_weight",
            "purchase_context_weight",
            "cart_context_weight",
        ):
            value = getattr(self, name)
            _require(value >= 0, f"pairs.{name}", f"must be >= 0, got {value}")


@dataclass(frozen=True)
class LearnConfig:
    dim: int = 64
    negatives: int = 5
    learning_rate: float = 0.2  # Adagrad base step (best of 0.05-0.4 on both data sets, BENCHMARKS.md)
    sampler_power: float = 0.75
    shards: int = 2
    batch_pairs: int = 8192  # pairs per pull/step/push trip (larger: less CPU, lower HR@20; BENCHMARKS.md)
    seed: int = 13
    # An item without a click (a positive pair) for this long in event time leaves the shards, the
    # sampler and what is served (a listed one is served from its content again); 0 = never. It
    # bounds the updater's memory under catalogue churn. The snapshotting updater expires.
    expire_after_s: float = 0.0
    torch_threads: int = 1  # pinned: 2 threads collapse when another process takes a core
    blas_threads: int = 1  # numpy's BLAS in the updater and eval (threads.py says why)
    # Distinct negatives per batch: each pair draws its negatives from a pool this large, drawn from
    # the sampler, which cuts the rows pulled and pushed; 0 = every negative drawn independently.
    negative_pool: int = 2048
    adagrad_initial: float = 0.1  # starting value of each row's squared-gradient accumulator
    # The learner trains once this many batches are pending (or when it publishes), in one train()
    # call that pipelines them over the shards: when training runs, not what it computes (each batch
    # is cut and trained as with 1, to the bit; learner.py, trainer.py). 8: the measured plateau of
    # the Ray path's speed (BENCHMARKS.md, training speed).
    train_batches: int = 8

    def __post_init__(self) -> None:
        _require(1 <= self.dim <= 1024, "learn.dim", "must be between 1 and 1024")
        _require(self.negatives >= 1, "learn.negatives", "must be >= 1")
        _require(self.learning_rate > 0, "learn.learning_rate", "must be > 0")
        _require(self.shards >= 1, "learn.shards", "must be >= 1")
        _require(self.batch_pairs >= 1, "learn.batch_pairs", "must be >= 1")
        _require(
            0 < self.sampler_power <= 1, "learn.sampler_power", f"must be in (0, 1], got {self.sampler_power}"
        )
        _require(self.expire_after_s >= 0, "learn.expire_after_s", "must be >= 0 (0 = never)")
        _require(self.torch_threads >= 1, "learn.torch_threads", "must be >= 1")
        _require(self.blas_threads >= 1, "learn.blas_threads", "must be >= 1")
        _require(self.negative_pool >= 0, "learn.negative_pool", "must be >= 0 (0 = no pool)")
        _require(self.adagrad_initial > 0, "learn.adagrad_initial", "must be > 0")
        _require(self.train_batches >= 1, "learn.train_batches", f"must be >= 1, got {self.train_batches}")


@dataclass(frozen=True)
class SnapshotConfig:
    # Whether this updater publishes snapshots (and writes the whole-updater checkpoints). Several
    # updaters sharing shards (``ray.address``) need exactly one publisher: false on the others.
    enabled: bool = True
    dir: str = "var/snapshots"
    interval_s: float = 2.0
    keep: int = 5
    # A full snapshot every this many; deltas (rows changed since the previous one) in between.
    full_every: int = 20
    # ...and sooner once the rows changed since the last full one reach this share of its rows: the
    # query API searches changed rows exactly, so a large delta costs query time (0 = never sooner).
    full_after_changed: float = 0.5
    # A delta leaves out rows whose interaction count did not move: rows touched only as negative
    # samples (~87% of the changed rows at 100k items, each output vector moving ~4% per second)
    # wait for the next full snapshot, so deltas, and the API's work per swap, follow the clicks.
    deltas_skip_negative_only_rows: bool = True

    def __post_init__(self) -> None:
        _require(self.interval_s > 0, "snapshot.interval_s", "must be > 0")
        _require(self.full_every >= 1, "snapshot.full_every", "must be >= 1")
        _require(self.full_after_changed >= 0, "snapshot.full_after_changed", "must be >= 0 (0 = never)")
        _require(self.keep >= 1, "snapshot.keep", "must be >= 1")


@dataclass(frozen=True)
class CheckpointConfig:
    """Consistent cuts of the updater's whole state with the Kafka offsets they cover (checkpoint.py)."""

    enabled: bool = True
    dir: str = "var/checkpoints"
    interval_s: float = 30.0  # a checkpoint at least this often while events arrive...
    every_events: int = 0  # ...and also after this many events since the last one (0 = by time only)
    keep: int = 3  # newest checkpoints kept; an older one is the fallback when the newest is damaged

    def __post_init__(self) -> None:
        _require(self.interval_s > 0, "checkpoint.interval_s", f"must be > 0, got {self.interval_s}")
        _require(self.every_events >= 0, "checkpoint.every_events", "must be >= 0 (0 = by time only)")
        _require(self.keep >= 1, "checkpoint.keep", f"must be >= 1, got {self.keep}")


@dataclass(frozen=True)
class IndexConfig:
    exact_below: int = 50_000  # catalogues smaller than this get an exact (flat) index
    kind: str = "hnsw"  # hnsw | ivf, above the threshold
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 16
    ivf_nlist: int = 0  # IVF cells; 0 = about 4 * sqrt(items)
    recall_gate: float = 0.9  # refuse to publish an index whose recall@20 on a sample is below this
    recall_sample: int = 200
    seed: int = 17  # IVF training sample and recall-gate queries
    # Weight of log(1 + count) added to next-item scores: the learner's sampler_power (see scoring.py).
    popularity_power: float = 0.75
    # FAISS threads for a full index build off the serving path (in the updater's snapshotter, or the
    # API when a snapshot ships no index): one leaves the other core to training and queries.
    build_threads: int = 1
    # Niceness of the snapshotter's index-build thread (Linux nices threads one by one): a full build
    # takes a core for tens of seconds, and at 10 it yields that core to training when both want it.
    build_niceness: int = 10
    # The query API's new-item component: cold rows of a full snapshot (``exact_below`` or more of
    # them) get an IVF index over their content vectors, built once per base on a background thread;
    # a query scores its top hits exactly and estimates the rest of the softmax from a uniform sample.
    cold_nlist: int = 0  # IVF cells; 0 = about sqrt(cold rows)
    # 16 of ~sqrt(n) cells: at 1M items (a kept end-to-end chain, four cold runs of 50k-808k rows) the
    # top-20 matched a search of every cell as at 32 or 8, and /recommend took 1.9 ms of CPU instead
    # of 2.5 (scripts/query_cost.py; BENCHMARKS.md, seventh session).
    cold_nprobe: int = 16
    cold_head: int = 256  # top cold hits scored exactly per query (the normaliser's head)
    cold_tail_sample: int = 2048  # cold rows sampled once per base for the normaliser's tail
    # The query API seals delta rows into an IVF run (on a background thread) once this many are
    # left unindexed; until then every query scans them exactly, in each of its three tables. 16,384
    # cut /recommend's CPU in a replay of a 1M-item chain, but not its p99 end to end, where the
    # more frequent builds and merges weighed more (BENCHMARKS.md, eighth session).
    delta_seal_rows: int = 50_000
    # Niceness of the query API's background threads: its own index builds (cold rows; sealed delta
    # rows: IVF, seconds at 1M rows), the load of a new full snapshot and the watcher's appends. With
    # the API on cores of its own, set 10, so that builds take what queries and swaps leave (1M items,
    # bench e2e --api-cpus 1: query p99 40 ms at 0, 17-29 ms at 10). On cores shared with training keep 0: rows are scanned exactly per query until their
    # build is ready, and starved builds made queries slower (1M items: p50 30-60 ms while the
    # catalogue was listed; before, at 10, the IVF over 900k cold rows, 6 s at 0, was not ready
    # after 60 s at load ~5).
    api_build_niceness: int = 0
    # ...or run them, the load of a new full snapshot and the watcher's appends under SCHED_IDLE
    # (Linux): they take only CPU time no query wants, and a query's threads preempt them at once
    # (threads.ThreadPriority). It also switches to a new full snapshot only once its indexes are
    # built, and keeps the delta columns on base pages, grown ahead (SnapshotWatcher._base_log,
    # delta_log.Appendable). Only with the API on cores of its own, where this is the setting to
    # use; on cores that training keeps busy the background work would starve.
    api_build_idle: bool = False
    # Rows of deltas the query API makes room for per base up front: address space only until
    # written (about 2.5 kB a row at dim 64 with content vectors), so no swap copies the rows
    # appended so far to grow before this many have come.
    delta_reserve_rows: int = 1 << 20

    @property
    def api_build_priority(self) -> ThreadPriority:
        """Of the query API's background threads: index builds, buffer growth, base loads, appends."""
        return ThreadPriority(self.api_build_niceness, self.api_build_idle)

    def __post_init__(self) -> None:
        _require(self.kind in ("hnsw", "ivf"), "index.kind", f"must be hnsw or ivf, got {self.kind!r}")
        _require(self.cold_nlist >= 0, "index.cold_nlist", "must be >= 0 (0 = about sqrt(cold rows))")
        _require(self.cold_nprobe >= 1, "index.cold_nprobe", f"must be >= 1, got {self.cold_nprobe}")
        _require(
            0 <= self.api_build_niceness <= 19,
            "index.api_build_niceness",
            f"must be 0-19, got {self.api_build_niceness}",
        )
        _require(self.cold_head >= 1, "index.cold_head", f"must be >= 1, got {self.cold_head}")
        _require(self.delta_reserve_rows >= 0, "index.delta_reserve_rows", "must be >= 0")
        _require(
            self.delta_seal_rows >= 1, "index.delta_seal_rows", f"must be >= 1, got {self.delta_seal_rows}"
        )
        _require(
            self.cold_tail_sample >= 1, "index.cold_tail_sample", f"must be >= 1, got {self.cold_tail_sample}"
        )
        _require(self.build_threads >= 1, "index.build_threads", f"must be >= 1, got {self.build_threads}")
        _require(
            0 <= self.build_niceness <= 19, "index.build_niceness", f"must be 0-19, got {self.build_niceness}"
        )
        _require(self.exact_below >= 0, "index.exact_below", f"must be >= 0, got {self.exact_below}")
        _require(self.hnsw_m >= 4, "index.hnsw_m", f"must be >= 4, got {self.hnsw_m}")
        _require(self.hnsw_ef_search >= 1, "index.hnsw_ef_search", "must be >= 1")
        _require(self.ivf_nprobe >= 1, "index.ivf_nprobe", "must be >= 1")
        _require(self.ivf_nlist >= 0, "index.ivf_nlist", "must be >= 0 (0 = about 4 * sqrt(items))")
        _require(0.0 <= self.recall_gate <= 1.0, "index.recall_gate", "must be within [0, 1]")
        _require(self.recall_sample >= 1, "index.recall_sample", "must be >= 1")


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_k: int = 1000
    max_body_bytes: int = 64 * 1024
    max_request_items: int = 100  # items (and exclusions) one /recommend body may name
    session_items: int = 3  # the last this many items of a session form its query vector
    # How often the query service looks for a new snapshot: one read of the small LATEST pointer, so
    # polling often is cheap, and every poll period is added to freshness (half of it on average).
    poll_s: float = 0.05
    # How long a thread that wants the GIL waits for the holder to let go (Python's switch interval,
    # 5 ms by default). Two requests in flight, or a request beside the watcher, then wait 5 ms
    # whenever the other runs Python: at 1M items end to end 1.0-1.7% of queries took over 10 ms at
    # the API in four runs, 0.36-0.72% in three at 0.5 ms (BENCHMARKS.md, ninth session).
    gil_switch_ms: float = 0.5

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "api.port", "must be a TCP port")
        _require(self.gil_switch_ms > 0, "api.gil_switch_ms", f"must be > 0, got {self.gil_switch_ms}")
        _require(self.max_k >= 1, "api.max_k", f"must be >= 1, got {self.max_k}")
        _require(self.max_body_bytes >= 256, "api.max_body_bytes", "must be >= 256")
        _require(self.max_request_items >= 1, "api.max_request_items", "must be >= 1")
        _require(self.session_items >= 1, "api.session_items", "must be >= 1")
        _require(self.poll_s > 0, "api.poll_s", "must be > 0")


@dataclass(frozen=True)
class ContentConfig:
    """The cold-start content tower (content.py, content_features.py)."""

    enabled: bool = True
    encoder: str = "hashed"  # minilm | hashed (character n-grams; no model weights needed)
    hashed_dim: int = 32768  # buckets of the hashed word + character 3-gram bag (sparse updates)
    category_buckets: int = 4096  # hashed buckets for category path prefixes / genres
    attribute_buckets: int = 16384  # hashed buckets for key=value attributes (brand, year, ...)
    hidden: int = 128  # width of the tower's hidden layers
    learning_rate: float = 0.003  # Adam
    temperature: float = 0.1  # of the in-batch softmax over co-occurring pairs
    alignment_weight: float = 1.0  # weight of (1 - cosine) to the item's learned vector
    # Chance, per item and field (title, category, attributes, price), that training blanks it, so the
    # tower also places new items whose metadata is partial (and cannot lean on one field alone).
    field_dropout: float = 0.2
    # Weight of the fixed feature sketch (content_features.FeatureSketch) in the tower's output, which
    # the learned layers correct: new items are placed by shared metadata before the tower has
    # trained. 0: the learned layers alone (their last layer then starts random, not at zero).
    sketch_weight: float = 1.0
    blend_half_life: float = 10.0  # interactions at which a vector is half content, half learned
    text_cache_size: int = 100_000  # distinct titles whose text features are kept (LRU)
    encode_batch: int = 128  # texts per sentence-encoder forward pass
    seed: int = 17  # initial weights
    # Training budget, in tower pairs per learner event (a fixed seed gives a fixed run; a clock would
    # not). Small on purpose: on the REES46 sample 54 early steps (aligning to still-random learned
    # vectors) took cold_hr@20 from 0.21 to 0.07, and more steps gained nothing on either stream; fewer
    # lost nothing either: 0.04 rather than 0.05 since the nineteenth session (MovieLens HR@20 0.1660 ->
    # 0.1659, cold 0.0459 -> 0.0453; REES46 0.4173 -> 0.4195, cold 0.5543 -> 0.5586), 0.03 since the
    # twentieth (MovieLens the same; REES46 0.4195 -> 0.4193, cold 0.5586 -> 0.5579), 0.02 since the
    # twenty-first (MovieLens 0.1659 -> 0.1658, cold the same; REES46 0.4193 -> 0.4205, cold 0.5579 ->
    # 0.5596; 0.025 left MovieLens at 18.9-20.1%), each to keep the tower's training within the
    # cold-start issue's 20% of the learner as the rest of the learner got cheaper (BENCHMARKS.md). On
    # both eval streams the tower takes fewer steps than reencode_every_steps, so its weights never
    # reach a served row there: what its steps change is the content rows' scale (``vector_norm``).
    train_batch: int = 256  # co-occurring pairs per tower step
    train_pairs_per_event: float = 0.02
    reservoir_pairs: int = 16384  # co-occurring pairs kept (uniform over the stream) to train on
    reencode_every_steps: int = 16  # tower steps after which a cached content vector is recomputed
    # ...at most this many per snapshot, oldest first: the cost and the delta stay bounded at 1M items.
    reencode_chunk: int = 2000
    # Newly listed items are encoded in the updater loop's spare time, oldest first, not at snapshots:
    # a bulk listing (a whole catalogue: ~20 us per item, scripts/encode_cost.py) costs seconds, and
    # encoding it at once held publishing (bench e2e at 1M: freshness p95 14.6 s). At most this share
    # of the loop's wall time while events flow, in slices of ``encode_slice_s`` (about what an event
    # arriving meanwhile waits); a pass that polled no event encodes for ``kafka.poll_timeout_ms``
    # (updater.EncodePacer). A clicked item is encoded when it is published, whatever waits. Eval
    # encodes every item at once.
    encode_share: float = 0.5
    encode_slice_s: float = 0.05
    # ...and republished only when it moved more than this (cosine distance): a delta carries the
    # content vectors that changed, not every one the tower touched.
    reencode_tolerance: float = 0.02
    # Cold-component temperature, fitted by likelihood on up to this many new-item targets per publish
    # against a sample of this many cold candidates.
    calibration_events: int = 128
    calibration_candidates: int = 512

    def __post_init__(self) -> None:
        _require(self.encoder in ("minilm", "hashed"), "content.encoder", "must be minilm or hashed")
        for name in ("hashed_dim", "category_buckets", "attribute_buckets", "hidden", "encode_batch"):
            value = getattr(self, name)
            _require(value >= 1, f"content.{name}", f"must be >= 1, got {value}")
        _require(self.text_cache_size >= 0, "content.text_cache_size", "must be >= 0 (0 = no cache)")
        _require(self.learning_rate > 0, "content.learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(self.temperature > 0, "content.temperature", f"must be > 0, got {self.temperature}")
        _require(self.alignment_weight >= 0, "content.alignment_weight", "must be >= 0")
        _require(self.sketch_weight >= 0, "content.sketch_weight", f"must be >= 0, got {self.sketch_weight}")
        _require(
            0 <= self.field_dropout < 1,
            "content.field_dropout",
            f"must be in [0, 1), got {self.field_dropout}",
        )
        _require(self.blend_half_life > 0, "content.blend_half_life", "must be > 0")
        _require(
            self.train_batch >= 2,
            "content.train_batch",
            f"must be >= 2 (in-batch negatives), got {self.train_batch}",
        )
        for name in (
            "reservoir_pairs",
            "reencode_every_steps",
            "reencode_chunk",
            "calibration_candidates",
        ):
            value = getattr(self, name)
            _require(value >= 1, f"content.{name}", f"must be >= 1, got {value}")
        _require(self.reencode_tolerance >= 0, "content.reencode_tolerance", "must be >= 0")
        _require(
            0 < self.encode_share <= 1, "content.encode_share", f"must be in (0, 1], got {self.encode_share}"
        )
        _require(self.encode_slice_s > 0, "content.encode_slice_s", f"must be > 0, got {self.encode_slice_s}")
        for name in ("train_pairs_per_event", "calibration_events"):
            value = getattr(self, name)
            _require(value >= 0, f"content.{name}", f"must be >= 0, got {value}")


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = start a local Ray instance in this process; else ray://host:port or auto
    num_cpus: int = 2
    object_store_mb: int = 512

    def __post_init__(self) -> None:
        _require(self.num_cpus >= 1, "ray.num_cpus", "must be >= 1")
        _require(self.object_store_mb >= 78, "ray.object_store_mb", "Ray needs at least 78 MB")


@dataclass(frozen=True)
class ProcessConfig:
    """Settings of a service's Python process (gc_tuning.py)."""

    # Net allocations of container objects between two young-generation collections (Python: 700).
    # At 700, full collections over the updater's millions of objects took a fifth of its time.
    gc_threshold: int = 50_000

    def __post_init__(self) -> None:
        _require(self.gc_threshold >= 0, "process.gc_threshold", f"must be >= 0, got {self.gc_threshold}")


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0  # 0 = do not expose /metrics from this process
    # Loopback by default; 0.0.0.0 in containers, where Prometheus scrapes from another host.
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "metrics.port", f"must be a TCP port (0 = off), got {self.port}")
        _require(bool(self.host), "metrics.host", "must name an address to listen on")


@dataclass(frozen=True)
class EvalConfig:
    """Prequential evaluation (evaluate.py): the protocol of the learner issue."""

    k: int = 20  # list length scored (HR@k, MRR@k)
    refresh_every: int = 1000  # events between publishes of a model's served state
    session_gap_s: float = 1800.0  # inactivity that splits a user's events when there is no session_id

    def __post_init__(self) -> None:
        _require(1 <= self.k <= 1000, "eval.k", f"must be between 1 and 1000, got {self.k}")
        _require(self.refresh_every >= 1, "eval.refresh_every", f"must be >= 1, got {self.refresh_every}")
        _require(self.session_gap_s > 0, "eval.session_gap_s", f"must be > 0, got {self.session_gap_s}")


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    limits: EventLimits = field(default_factory=EventLimits)
    sim: SimConfig = field(default_factory=SimConfig)
    sessions: SessionConfig = field(default_factory=SessionConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


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
