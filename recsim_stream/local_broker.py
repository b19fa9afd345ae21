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
def private_broker(folder: Path, start_timeout_s: float = 180.0) -> Iterator[str]:
    """Start a broker (deploy/kafka/kafka.sh) on a free port with its data and logs under ``folder``;
    yields its bootstrap address and stops it on exit, also after a failure."""
    folder = Path(folder)
    where = [
        "--port",
        str(free_port(pair=True)),
        "--data",
        str(folder / "data"),
        "--logs",
        str(folder / "logs"),
    ]
    try:
        subprocess.run([str(KAFKA_SH), "start", *where], check=True, timeout=start_timeout_s)
        yield f"127.0.0.1:{where[1]}"
    finally:
        subprocess.run([str(KAFKA_SH), "stop", *where], check=False, timeout=90)
