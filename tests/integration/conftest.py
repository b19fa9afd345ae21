"""Fixtures for integration tests: real services started once per session, never mocks.

Kafka: a throwaway broker from deploy/kafka/kafka.sh on a free port, with its data and logs in a
temporary folder; or, when RECSIM_TEST_KAFKA_BOOTSTRAP is set, that broker (left running).
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsim_stream.config import KafkaConfig
from recsim_stream.kafka_io import ensure_topics

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"


def _free_port_pair() -> int:
    """A port P such that P and P + 1 (the controller's) are free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            with socket.socket() as controller:
                try:
                    controller.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("found no two adjacent free ports on 127.0.0.1 in 50 tries")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RECSIM_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    folder = tmp_path_factory.mktemp("kafka")
    port = _free_port_pair()
    where = ["--port", str(port), "--data", str(folder / "data"), "--logs", str(folder / "logs")]
    subprocess.run([str(KAFKA_SH), "start", *where], check=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(KAFKA_SH), "stop", *where], check=True, timeout=60)


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    """A KafkaConfig whose topics and group belong to this test alone; the topics exist."""
    suffix = uuid.uuid4().hex[:10]
    config = KafkaConfig(
        bootstrap=kafka_bootstrap,
        events_topic=f"events-{suffix}",
        items_topic=f"items-{suffix}",
        dlq_topic=f"events-dlq-{suffix}",
        group_id=f"test-{suffix}",
        partitions=4,
    )
    ensure_topics(config)
    return config
