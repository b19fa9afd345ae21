"""Every ``recsim_*`` metric, defined in one place on an injected registry.

Names follow ``recsim_<thing>_<unit>[_total]`` in base units; labels come only from small fixed sets
(``LABELS``), never user or item ids. Each service builds the group it needs on its own registry, so
tests can read values without global state. Labelled counters whose label values are known up front
are created at zero, so the first increment shows up in ``rate()`` and ``increase()`` (a series born
at 1 has no earlier sample to differ from) and alerts see the first dead letter or refusal.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from recsim_stream.events import BadReason, EventKind

# Every label name a recsim metric may carry; each has a small, fixed set of values.
LABELS = frozenset(
    {
        "reason",
        "shard",
        "partition",
        "endpoint",
        "status",
        "kind",
        "index",
        "cause",
        "client",
        "operation",
        "outcome",
    }
)
HANDOFF_OUTCOMES = ("exact", "afresh")
SNAPSHOT_WRITE_REFUSALS = ("write_failed", "recall", "index_failed")
SNAPSHOT_LOAD_REFUSALS = ("corrupt", "recall")
RECOVERY_CAUSES = ("shard_actor",)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_FRESHNESS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0, 300.0)


def new_registry() -> CollectorRegistry:
    """A registry with the process collector (resident memory, CPU) already on it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


class UpdaterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_consumed = Counter(
            "recsim_events_consumed_total", "Records read from the events topic.", registry=registry
        )
        self.events_trained = Counter(
            "recsim_events_trained_total", "Events whose pairs were applied to the shards.", registry=registry
        )
        self.dead_lettered = Counter(
            "recsim_events_dead_lettered_total",
            "Records sent to the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        for reason in BadReason:
            self.dead_lettered.labels(reason.value)
        self.consumer_lag = Gauge(
            "recsim_consumer_lag_records",
            "Records behind the end of each partition.",
            ["partition"],
            registry=registry,
        )
        self.state_records = Gauge(
            "recsim_state_records",
            "Records (events and dead letters) whose effect the in-memory state holds: those of the "
            "restored checkpoint, then each one processed.",
            registry=registry,
        )
        self.sessions_open = Gauge("recsim_sessions_open", "Sessions held in memory.", registry=registry)
        self.sessions_closed = Counter(
            "recsim_sessions_closed_total", "Sessions closed by the watermark.", registry=registry
        )
        self.partition_handoffs = Counter(
            "recsim_partition_handoffs_total",
            "Partitions assigned with earlier records: open sessions handed over exactly (the stored "
            "offset is the one resumed from), or started afresh (no matching hand-off: a crash).",
            ["outcome"],
            registry=registry,
        )
        for outcome in HANDOFF_OUTCOMES:
            self.partition_handoffs.labels(outcome)
        self.pairs_trained = Counter(
            "recsim_pairs_trained_total", "Skip-gram pairs trained.", registry=registry
        )
        self.loss = Gauge(
            "recsim_training_loss",
            "Moving average of the SGNS loss per pair (each step's largest piece).",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "recsim_train_batch_seconds",
            "Pull, step and push of one batch.",
            buckets=_LATENCY_BUCKETS[3:],
            registry=registry,
        )
        self.shard_rows = Gauge("recsim_shard_rows", "Rows held by each shard.", ["shard"], registry=registry)
        self.shard_table_bytes = Gauge(
            "recsim_shard_table_bytes",
            "Bytes of the input and output tables of each shard: the bulk of the Ray actors' memory.",
            ["shard"],
            registry=registry,
        )
        self.items_new = Counter(
            "recsim_items_new_total", "Item ids seen for the first time.", registry=registry
        )
        self.rows_expired = Counter("recsim_rows_expired_total", "Rows dropped by expiry.", registry=registry)
        self.sampler_items = Gauge(
            "recsim_sampler_items",
            "Distinct items the negative sampler draws from (not expired).",
            registry=registry,
        )
        self.content_training_cpu = Counter(
            "recsim_content_training_cpu_seconds_total",
            "CPU seconds the updater's loop spent training the content tower (keeping pairs, pulling, steps).",
            registry=registry,
        )
        self.items_deleted = Counter(
            "recsim_items_deleted_total",
            "Tombstones read on the items topic: items deleted from the catalogue, no longer served.",
            registry=registry,
        )
        self.items_cold_started = Counter(
            "recsim_items_cold_started_total",
            "Items given a content-based initial vector.",
            registry=registry,
        )


class SnapshotMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.build_seconds = Histogram(
            "recsim_snapshot_build_seconds",
            "Export, write and index build of one snapshot.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.pause_seconds = Histogram(
            "recsim_snapshot_pause_seconds",
            "Time the updater's loop spends on one snapshot (exporting the shards, completing the rows):"
            " training and every other snapshot wait meanwhile.",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=registry,
        )
        self.published = Counter(
            "recsim_snapshots_published_total", "Snapshots published.", registry=registry
        )
        self.refused = Counter(
            "recsim_snapshots_refused_total",
            "Snapshots the updater failed to publish.",
            ["reason"],
            registry=registry,
        )
        for reason in SNAPSHOT_WRITE_REFUSALS:
            self.refused.labels(reason)
        self.items = Gauge(
            "recsim_snapshot_items", "Items in the last published snapshot.", registry=registry
        )
        self.last_published = Gauge(
            "recsim_snapshot_last_published_timestamp_seconds",
            "Unix time of the last publish.",
            registry=registry,
        )


class CheckpointMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter("recsim_checkpoints_written_total", "Checkpoints written.", registry=registry)
        self.failed = Counter(
            "recsim_checkpoint_failures_total",
            "Checkpoints that could not be written (the previous one stays the restart point).",
            registry=registry,
        )
        self.seconds = Histogram(
            "recsim_checkpoint_seconds",
            "State capture and write of one checkpoint.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.last_written = Gauge(
            "recsim_checkpoint_last_written_timestamp_seconds",
            "Unix time of the last checkpoint written.",
            registry=registry,
        )
        self.recoveries = Counter(
            "recsim_recoveries_total",
            "In-process restarts from the last checkpoint after a failure.",
            ["cause"],
            registry=registry,
        )
        for cause in RECOVERY_CAUSES:
            self.recoveries.labels(cause)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_seconds = Histogram(
            "recsim_query_duration_seconds",
            "Query latency.",
            ["endpoint", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.swaps = Counter("recsim_index_swaps_total", "Serving states swapped in.", registry=registry)
        self.refused = Counter(
            "recsim_snapshot_loads_refused_total",
            "Snapshots the query service refused to load.",
            ["reason"],
            registry=registry,
        )
        for reason in SNAPSHOT_LOAD_REFUSALS:
            self.refused.labels(reason)
        # Measured where the gate runs: the query service builds the index it serves.
        self.recall = Gauge(
            "recsim_index_recall_ratio",
            "Recall@20 against exact search of the index last built, per index (similar, recommend).",
            ["index"],
            registry=registry,
        )
        self.version = Gauge("recsim_serving_version", "Snapshot version being served.", registry=registry)
        self.items = Gauge("recsim_index_items", "Items in the serving index.", registry=registry)
        self.snapshot_age = Gauge(
            "recsim_serving_snapshot_age_seconds", "Age of the served snapshot.", registry=registry
        )
        self.freshness = Histogram(
            "recsim_freshness_seconds",
            "From the newest covered event's production to being served.",
            buckets=_FRESHNESS_BUCKETS,
            registry=registry,
        )


# Kafka clients (kafka_io.py) and what each may retry while the broker does not answer.
KAFKA_CLIENT_OPERATIONS = {
    "events_consumer": ("poll", "commit"),
    "items_reader": ("poll",),
    "producer": ("send", "flush"),
}


class KafkaMetrics:
    """Shared by every Kafka client of a process; the ``client`` label tells them apart."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "recsim_kafka_connected",
            "1 while this Kafka client reaches the broker, 0 from the first failed attempt of an outage.",
            ["client"],
            registry=registry,
        )
        self.retries = Counter(
            "recsim_kafka_retries_total",
            "Attempts repeated because the broker did not answer: polls and acknowledgement waits "
            "that found it unreachable, commits deferred, records sent again.",
            ["client", "operation"],
            registry=registry,
        )

    def register(self, client: str) -> None:
        """A client starts: connected, its retry counters at zero."""
        self.connected.labels(client).set(1)
        for operation in KAFKA_CLIENT_OPERATIONS[client]:
            self.retries.labels(client, operation)


class SimulatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_produced = Counter(
            "recsim_events_produced_total", "Events sent to Kafka.", ["kind"], registry=registry
        )
        for kind in EventKind:
            self.events_produced.labels(kind.value)
        self.items_listed = Counter(
            "recsim_items_listed_total", "Item metadata records sent.", registry=registry
        )


_served: set[int] = set()
_served_lock = threading.Lock()


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> int:
    """Expose ``registry`` on http://host:port/metrics from a daemon thread, once per port.

    Returns the port listened on: with ``port=0`` the OS picks a free one (tests), so there is no race
    between finding a free port and binding it."""
    with _served_lock:
        if port in _served:
            return port
        server, _thread = start_http_server(port, addr=host, registry=registry)
        bound = int(server.server_port)
        _served.add(bound)
        return bound
