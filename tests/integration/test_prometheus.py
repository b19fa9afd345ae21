"""The Prometheus configuration, alert rules and Grafana dashboard against the real Prometheus.

``promtool`` checks both scrape configurations and the rules and runs the rules' unit tests. Then the
metric endpoints of the updater, the query API and the simulator are started in this process (the
query API's through its real code: snapshots written by the real snapshotter, loaded by the real
watcher, queried through the real app), the real server scrapes them, and every query on the
dashboard must return a series with a number in it.
"""

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
from recsim_stream.http_api import create_app
from recsim_stream.metrics import (
    ApiMetrics,
    CheckpointMetrics,
    KafkaMetrics,
    SimulatorMetrics,
    SnapshotMetrics,
    UpdaterMetrics,
    new_registry,
    serve_metrics,
)
from recsim_stream.query import IndexHolder, SnapshotWatcher
from recsim_stream.shard import ShardExport
from recsim_stream.snapshot import SnapshotStore
from recsim_stream.snapshotter import Snapshotter

pytestmark = pytest.mark.integration

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "recsim.json"
# Grafana's $__rate_interval is at least four scrape intervals; the test server scrapes every second.
RATE_INTERVAL = "1m"
DIM = 8
ITEMS = 300


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not on PATH: scripts/ensure-prometheus.sh installs it (make test runs it)")
    return path


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


@pytest.mark.parametrize("config", ["prometheus.local.yml", "prometheus.compose.yml"])
def test_scrape_config_is_valid(promtool, config):
    result = _run(promtool, "check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid(promtool):
    result = _run(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests(promtool):
    result = _run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels if p["type"] != "row" for t in p["targets"]]
    return [e.replace("$__rate_interval", RATE_INTERVAL) for e in exprs]


def _export(version: int, keys: np.ndarray, seed: int) -> ShardExport:
    rng = np.random.default_rng(seed)
    return ShardExport(
        version=version,
        keys=keys.astype(np.int64),
        input=rng.normal(size=(len(keys), DIM)).astype(np.float32),
        output=rng.normal(size=(len(keys), DIM)).astype(np.float32),
        counts=np.full(len(keys), 5, dtype=np.int64),
        versions=np.full(len(keys), version, dtype=np.int64),
        removed=np.zeros(0, dtype=np.int64),
    )


class Services:
    """The three services' metrics on their own registries and ports, driven round by round."""

    def __init__(self, folder: Path) -> None:
        self.updater_registry, self.api_registry, self.simulator_registry = (new_registry() for _ in range(3))
        self.updater = UpdaterMetrics(self.updater_registry)
        self.checkpoint = CheckpointMetrics(self.updater_registry)
        self.kafka = KafkaMetrics(self.updater_registry)
        for client in ("events_consumer", "items_reader", "producer"):
            self.kafka.register(client)
        self.simulator = SimulatorMetrics(self.simulator_registry)
        snapshot_config = SnapshotConfig(dir=str(folder / "snapshots"), keep=3)
        self.snapshotter = Snapshotter(
            snapshot_config, SnapshotStore(snapshot_config), SnapshotMetrics(self.updater_registry), shards=1
        )
        self.api = ApiMetrics(self.api_registry)
        self.holder = IndexHolder(ApiConfig(), self.api)
        index = IndexConfig(exact_below=1000, recall_sample=50)
        self.watcher = SnapshotWatcher(SnapshotStore(snapshot_config), self.holder, index, poll_s=0.01)
        self.client = TestClient(create_app(self.holder, ApiConfig(), self.api_registry))
        self.rounds = 0

    def serve(self) -> dict[str, str]:
        """Expose each registry on a free port; service label -> host:port."""
        registries = {
            "updater": self.updater_registry,
            "api": self.api_registry,
            "simulator": self.simulator_registry,
        }
        return {service: f"127.0.0.1:{serve_metrics(r, 0)}" for service, r in registries.items()}

    def run_round(self) -> None:
        """What a few seconds of the running system would record."""
        self.rounds += 1
        u = self.updater
        u.events_consumed.inc(5000)
        u.events_trained.inc(4950)
        u.dead_lettered.labels("not_msgpack").inc(30)
        u.dead_lettered.labels("late").inc(20)
        for partition, lag in enumerate((1200, 800, 950, 400)):
            u.consumer_lag.labels(str(partition)).set(lag * self.rounds)
        u.sessions_open.set(800 + 10 * self.rounds)
        u.sessions_closed.inc(300)
        u.pairs_trained.inc(90_000)
        u.loss.set(2.3 - 0.1 * self.rounds)
        for seconds in (0.012, 0.018, 0.035):
            u.batch_seconds.observe(seconds)
        for shard in range(2):
            u.shard_rows.labels(str(shard)).set(ITEMS // 2 + 10 * self.rounds)
            u.shard_table_bytes.labels(str(shard)).set((ITEMS // 2) * DIM * 4 * 2)
        u.items_new.inc(40)
        u.state_records.set(5000 * self.rounds)
        self.checkpoint.written.inc()
        self.checkpoint.seconds.observe(0.4)
        for kind, seconds in (("delta", 0.05), ("full", 1.1)):  # the updater's, around snapshotter.take
            self.snapshotter.metrics.pause_seconds.labels(kind).observe(seconds)
        self.checkpoint.last_written.set(time.time())
        u.rows_expired.inc(3)
        u.items_cold_started.inc(6)
        u.sampler_items.set(ITEMS)
        for kind, count in (("click", 4500), ("cart", 350), ("purchase", 150)):
            self.simulator.events_produced.labels(kind).inc(count)
        self.simulator.items_listed.inc(40)
        self._query(expect_ready=self.holder.state is not None)
        self._publish_and_load()
        self._query(expect_ready=True)

    def _publish_and_load(self) -> None:
        since = self.snapshotter.since()
        version = self.rounds
        keys = np.arange(ITEMS) if since[0] is None else np.arange(10 * self.rounds, 10 * self.rounds + 20)
        self.snapshotter.take(
            [_export(version, keys, seed=version)],
            lambda ks: [f"item-{k}" for k in ks.tolist()],
            set(),
            {"events": {0: 5000 * self.rounds}},
            time.time() - 1.5,
            newest_record_ts=time.time() - 1.5,
        )
        self.snapshotter.wait()
        assert self.watcher.poll_once()

    def _query(self, expect_ready: bool) -> None:
        ok, missing = (200, 404) if expect_ready else (503, 503)
        assert self.client.get("/items/item-1/similar", params={"k": 5}).status_code == ok
        assert self.client.post("/recommend", json={"items": ["item-2", "item-3"], "k": 10}).status_code == ok
        assert self.client.get("/items/no-such-item/similar").status_code == missing
        assert self.client.get("/healthz").status_code == ok


@pytest.fixture(scope="module")
def scraped(prometheus, tmp_path_factory):
    """The services scraped at least once before their last round of activity and once after, so every
    counter has two samples to take a rate from and every histogram a quantile."""
    services = Services(tmp_path_factory.mktemp("services"))
    services.run_round()
    targets = services.serve()
    instances = list(targets.values())
    with prometheus.scrape("observability", targets):
        before = prometheus.wait_for_scrapes(instances, {})
        services.run_round()
        prometheus.wait_for_scrapes(instances, before)
        yield prometheus


@pytest.mark.parametrize("expr", _dashboard_queries())
def test_dashboard_query_returns_a_number(scraped, expr):
    result = scraped.query(expr)
    assert result != [], f"no series for {expr}"
    assert any(math.isfinite(float(series["value"][1])) for series in result), result


def test_every_alert_rule_evaluates_without_error(scraped):
    # Evaluation runs every second: wait until each rule has been evaluated over the scraped data.
    deadline = time.monotonic() + 30
    while True:
        rules = [r for g in scraped.api("/api/v1/rules")["groups"] for r in g["rules"]]
        if all(r["health"] != "unknown" for r in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
    assert len(rules) == 12
