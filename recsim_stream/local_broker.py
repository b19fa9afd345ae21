"""A private Kafka broker on loopback, and free ports, for the tests and benchmarks that start services."""

from __future__ import annotations

import random
import socket
import subprocess
import time
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


def _port_free(port: int, reuse: bool = True) -> bool:
    """Whether a listener could bind ``port`` now; with ``reuse`` (SO_REUSEADDR, as the broker's JVM
    binds) the TIME_WAIT sockets a stopped broker leaves behind do not count."""
    with socket.socket() as probe:
        if reuse:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def broker_port_pair() -> int:
    """A port P with P and P + 1 free, below the ephemeral range when there is room (20000 up to it).

    The kernel hands ephemeral ports to every outgoing connection on the machine (Ray opens many):
    while a broker is stopped, one of them can take its port, and a restart on the same port then
    fails (seen: "Address already in use" on the controller port). Ports outside that range are only
    ever taken by an explicit bind. Without room there (an unusual range), any free pair."""
    low, high = 20000, _ephemeral_ports_start() - 1
    for _ in range(200 if high - low > 100 else 0):
        port = random.randrange(low, high)
        if _port_free(port, reuse=False) and _port_free(port + 1, reuse=False):
            return port
    return free_port(pair=True)


class LocalBroker:
    """One broker run by deploy/kafka/kafka.sh on ``port`` (controller on ``port + 1``) with its data
    and logs under ``folder``. ``stop()`` then ``start()`` is a broker restart as clients see one in
    production: the same address, the same data (topics, offsets, committed group offsets)."""

    def __init__(self, folder: Path, port: int, start_timeout_s: float = 180.0) -> None:
        self.folder = Path(folder)
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._paths = ["--data", str(self.folder / "data"), "--logs", str(self.folder / "logs")]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port_wait_s: float = 0.0) -> bool:
        """Start (a no-op if running); False if kafka.sh failed, its log is under ``folder/logs``.

        ``port_wait_s``: how long to wait for the two ports to be free first (a restart: the old
        broker's sockets, or a client's outgoing connection, may hold them for a moment)."""
        deadline = time.monotonic() + port_wait_s
        while not (_port_free(self.port) and _port_free(self.port + 1)) and time.monotonic() < deadline:
            time.sleep(0.1)
        started = subprocess.run(
            [str(KAFKA_SH), "start", "--port", str(self.port), *self._paths],
            timeout=self.start_timeout_s,
            check=False,
        )
        return started.returncode == 0

    def restart(self, port_wait_s: float = 30.0) -> None:
        """Start again after ``stop()`` on the same port and data; raises if the broker cannot."""
        if not self.start(port_wait_s):
            raise RuntimeError(
                f"restarting the broker on {self.bootstrap} failed; its log is in {self.folder / 'logs'}"
            )

    def stop(self) -> None:
        """TERM (a controlled shutdown), then KILL after kafka.sh's stop timeout."""
        subprocess.run([str(KAFKA_SH), "stop", *self._paths], check=False, timeout=90)


@contextmanager
def restartable_broker(
    folder: Path, start_timeout_s: float = 180.0, attempts: int = 3
) -> Iterator[LocalBroker]:
    """Start a broker on a free port pair with its data and logs under ``folder``; yields it (to stop
    and restart mid-test) and stops it on exit, also after a failure.

    A port found free can still be taken by another process before the broker binds it, so a failed
    first start is retried on a fresh port pair."""
    for attempt in range(1, attempts + 1):
        broker = LocalBroker(folder, broker_port_pair(), start_timeout_s)
        if broker.start():
            break
        if attempt == attempts:
            raise RuntimeError(f"kafka.sh start failed {attempts} times; its log is in {folder / 'logs'}")
    try:
        yield broker
    finally:
        broker.stop()


@contextmanager
def private_broker(folder: Path, start_timeout_s: float = 180.0, attempts: int = 3) -> Iterator[str]:
    """``restartable_broker`` for callers that only need its bootstrap address."""
    with restartable_broker(folder, start_timeout_s, attempts) as broker:
        yield broker.bootstrap
