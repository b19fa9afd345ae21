"""The services as processes, scraped by the real Prometheus: the simulator producing into the real
broker, the updater training on Ray and publishing snapshots, the query API answering queries.

test_prometheus.py checks every dashboard query and alert rule over metric registries driven in
process; this test checks that the deployable entry points really expose those metrics on their
ports, with values that move as the system works.
"""

from __future__ import annotations

import sys
import time

import httpx
import pytest

from recsim_stream.local_broker import free_port
from recsim_stream.processes import Children

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "recsim_stream.cli"]


def _value(prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else None


def _wait(what: str, ready, children: Children, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        children.check()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{children.log(n)[-1500:]}" for n in children.procs)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.5)


@pytest.mark.timeout(400)
def test_every_service_process_is_scraped_with_moving_figures(prometheus, kafka_config, tmp_path):
    kafka = [
        "--kafka-bootstrap", kafka_config.bootstrap, "--kafka-events-topic", kafka_config.events_topic,
        "--kafka-items-topic", kafka_config.items_topic, "--kafka-dlq-topic", kafka_config.dlq_topic,
    ]  # fmt: skip
    ports = {"updater": free_port(), "simulator": free_port()}
    api_port = free_port()
    snapshots = str(tmp_path / "snapshots")
    children = Children(tmp_path)
    try:
        children.start(
            "updater",
            [*CLI, "train", *kafka, "--kafka-group-id", kafka_config.group_id, "--snapshot-dir", snapshots,
             "--checkpoint-dir", str(tmp_path / "checkpoints"), "--checkpoint-interval-s", "2",
             "--metrics-port", str(ports["updater"])],
        )  # fmt: skip
        children.start("api", [*CLI, "serve", "--port", str(api_port), "--snapshot-dir", snapshots])
        children.start(
            "simulator",
            [*CLI, "simulate", *kafka, "--events", "0", "--rate", "300", "--items", "300",
             "--metrics-port", str(ports["simulator"])],
        )  # fmt: skip
        targets = {
            "updater": f"127.0.0.1:{ports['updater']}",
            "simulator": f"127.0.0.1:{ports['simulator']}",
            "api": f"127.0.0.1:{api_port}",
        }
        api = f"http://127.0.0.1:{api_port}"

        def api_ready() -> bool:
            try:
                return httpx.get(f"{api}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("the query API to serve a snapshot", api_ready, children)
        item = httpx.get(f"{api}/snapshot", timeout=5).json()
        assert item["items"] > 0
        with prometheus.scrape("service-processes", targets):
            prometheus.wait_for_scrapes(list(targets.values()), {}, timeout_s=60)
            for _ in range(20):  # some traffic for the API's latency histogram
                httpx.post(f"{api}/recommend", json={"items": ["no-such-item"], "k": 5}, timeout=5)
            # Two scrapes more than now: a scrape that began during the traffic may be counted next,
            # with only part of it (14 of 20 requests, seen in a full-suite run).
            after_traffic = {i: n + 1 for i, n in prometheus.scrapes(list(targets.values())).items()}
            _wait(
                "a checkpoint",
                lambda: (_value(prometheus, "recsim_checkpoints_written_total") or 0) > 0,
                children,
            )
            _wait(  # the updater collects the shard actors' figures with its progress line, every 5 s
                "the shards' figures",
                lambda: (_value(prometheus, 'sum(recsim_shard_rows{service="updater"})') or 0) > 0,
                children,
            )
            prometheus.wait_for_scrapes(list(targets.values()), after_traffic, timeout_s=60)
            for service in targets:
                assert _value(prometheus, f'up{{service="{service}"}}') == 1.0, service
                rss = _value(prometheus, f'process_resident_memory_bytes{{service="{service}"}}')
                assert rss is not None and rss > 0, service
            assert _value(prometheus, 'sum(recsim_events_produced_total{service="simulator"})') > 0
            assert _value(prometheus, 'recsim_events_trained_total{service="updater"}') > 0
            assert _value(prometheus, 'recsim_snapshots_published_total{service="updater"}') > 0
            assert _value(prometheus, 'recsim_state_records{service="updater"}') > 0
            assert _value(prometheus, 'min(recsim_kafka_connected{service="updater"})') == 1.0
            assert _value(prometheus, 'sum(recsim_shard_rows{service="updater"})') > 0  # Ray actors' figures
            assert _value(prometheus, 'recsim_index_items{service="api"}') > 0
            # wall-clock freshness: from the newest record's Kafka timestamp to the swap that serves it
            freshness = _value(
                prometheus, 'histogram_quantile(0.5, recsim_freshness_seconds_bucket{service="api"})'
            )
            assert freshness is not None and 0 < freshness < 60
            requests = 'sum(recsim_query_duration_seconds_count{service="api", endpoint="/recommend"})'
            assert _value(prometheus, requests) >= 20
    finally:
        children.stop_all()
