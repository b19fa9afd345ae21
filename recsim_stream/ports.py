"""Free TCP ports on loopback, for the services that tests and benchmarks start."""

from __future__ import annotations

import socket


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
