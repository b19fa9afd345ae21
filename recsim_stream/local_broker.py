"""A private Kafka broker on loopback, and free ports, for the tests and benchmarks that start services."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KAFKA_SH = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "kafka.sh"


def free_port(pair: bool = False) -> int:
    """A port on 127.0.0.1 that is free right now; with ``pair``, P + 1 is free too (the Kafka
    broker's controller listens there)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not pair:
            return port
        if port < 65535:
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("found no two adjacent free ports on 127.0.0.1 in 50 tries")


@contextmanager
def private_broker(folder: Path, start_timeout_s: float = 180.0, attempts: int = 3) -> Iterator[str]:
    """Start a broker (deploy/kafka/kafka.sh) on a free port with its data and logs under ``folder``;
    yields its bootstrap address and stops it on exit, also after a failure.

    A port found free can be taken by another process before the broker binds it (Ray starts many),
    so a failed start is retried on a fresh port pair."""
    folder = Path(folder)
    paths = ["--data", str(folder / "data"), "--logs", str(folder / "logs")]
    for attempt in range(1, attempts + 1):
        port = free_port(pair=True)
        started = subprocess.run(
            [str(KAFKA_SH), "start", "--port", str(port), *paths], timeout=start_timeout_s, check=False
        )
        if started.returncode == 0:
            break
        if attempt == attempts:
            raise RuntimeError(f"kafka.sh start failed {attempts} times; its log is in {folder / 'logs'}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(KAFKA_SH), "stop", *paths], check=False, timeout=90)
