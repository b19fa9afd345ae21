"""Fixtures for integration tests: real services started once per session, never mocks.

Kafka: a throwaway broker from deploy/kafka/kafka.sh on a free port, with its data and logs in a
temporary folder; or, when RECSIM_TEST_KAFKA_BOOTSTRAP is set, that broker (left running).
Prometheus: the real server from Debian's package, one per session, scraping targets that tests
register (``prometheus.scrape``), with deploy/prometheus/alerts.yml loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from recsim_stream.config import KafkaConfig
from recsim_stream.kafka_io import ensure_topics
from recsim_stream.local_broker import free_port, private_broker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RECSIM_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    with private_broker(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    """A KafkaConfig whose topics and group belong to this test alone; the topics exist."""
    config = KafkaConfig.isolated(kafka_bootstrap, "test", partitions=4)
    ensure_topics(config)
    return config


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance for the whole session (starting one costs 3-4 s and ~500 MB).

    Ray is imported here, not at the top, so that tests which do not use it do not pay its import."""
    import ray

    from recsim_stream.config import RayConfig
    from recsim_stream.ray_actors import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=256))
    try:
        yield
    finally:
        ray.shutdown()


# --- Prometheus: one real server per session; tests register scrape targets through file discovery.

PROMETHEUS_JOB = "recsim"  # the job name alerts.yml and the Grafana dashboard select on
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"


class PrometheusServer:
    """A real ``prometheus`` on loopback scraping every second, with deploy/prometheus/alerts.yml
    loaded; tests add targets with ``scrape`` and wait for samples with ``wait_for_scrapes``."""

    def __init__(self, url: str, targets_dir: Path) -> None:
        self.url = url
        self.targets_dir = targets_dir

    @contextmanager
    def scrape(self, name: str, targets: dict[str, str]) -> Iterator[None]:
        """Scrape ``targets`` (service label -> host:port) under the recsim job while the block runs."""
        groups = [
            {"targets": [address], "labels": {"service": service}} for service, address in targets.items()
        ]
        path = self.targets_dir / f"{name}.json"
        staging = self.targets_dir / f"{name}.staging"  # discovery reads *.json only: write, then rename
        staging.write_text(json.dumps(groups))
        staging.rename(path)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def api(self, path: str, **params: str) -> dict:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(
                f"GET {path} {params}: expected status success, got {response.status_code} {body}"
            )
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant-query result of ``expr`` now: one entry per series."""
        return self.api("/api/v1/query", query=expr)["result"]

    def scrapes(self, instances: list[str]) -> dict[str, int]:
        """Successful scrapes of each instance in the last ten minutes."""
        found = {instance: 0 for instance in instances}
        for series in self.query(f'sum_over_time(up{{job="{PROMETHEUS_JOB}"}}[10m])'):
            if series["metric"]["instance"] in found:
                found[series["metric"]["instance"]] = int(float(series["value"][1]))
        return found

    def wait_for_scrapes(
        self, instances: list[str], more_than: dict[str, int], timeout_s: float = 60.0
    ) -> dict[str, int]:
        """Poll until every instance has more successful scrapes than ``more_than`` gives (0 when absent)."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = self.scrapes(instances)
            if all(counts[i] > more_than.get(i, 0) for i in instances):
                return counts
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected more successful scrapes than {more_than} within {timeout_s:.0f} s, "
                    f"have {counts}; targets: {self.api('/api/v1/targets')['activeTargets']}"
                )
            time.sleep(0.2)


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with status {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"prometheus at {url} not ready within {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "the prometheus binary is not on PATH: scripts/ensure-prometheus.sh installs it (make test runs it)"
        )
    folder = tmp_path_factory.mktemp("prometheus")
    targets = folder / "targets"
    targets.mkdir()
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {
                "job_name": PROMETHEUS_JOB,
                "file_sd_configs": [{"files": [str(targets / "*.json")], "refresh_interval": "1s"}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, process, log)
        yield PrometheusServer(url, targets)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
