"""``recsim-stream up``: the whole system on one machine, on embedded defaults (``make run``).

Starts from an empty broker, snapshot and checkpoint folder under ``--data-dir`` (a demo, not a deployment), then
the Kafka broker (deploy/kafka/kafka.sh), the topics, the updater (with its Ray
shards and the snapshotter), the query API, the simulator and a Prometheus server scraping them, each
as a child process whose output is prefixed with its name. Ctrl-C stops everything it started, in
reverse order, and stops the broker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from recsim_stream.config import add_config_arguments, load_config

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
PROMETHEUS_PORT = 9090
# Ports of each service's /metrics endpoint; deploy/prometheus/prometheus.local.yml scrapes these.
METRICS_PORTS = {"updater": 9101, "api": 9102, "simulator": 9103}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-prometheus", action="store_true", help="do not start a Prometheus server")
    parser.add_argument("--data-dir", default="var", help="where broker data, snapshots and logs go")
    add_config_arguments(parser, ["kafka", "sim", "api"])


def _pump(name: str, stream, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[{name}] {line}")
        out.flush()


class Stack:
    """Child processes started in order and stopped in reverse order."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        threading.Thread(target=_pump, args=(name, proc.stdout, sys.stdout), daemon=True).start()
        self.children.append((name, proc))
        return proc

    def failed(self) -> str | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return f"{name} exited with status {proc.returncode}"
        return None

    def stop(self) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                print(f"==> stopping {name}", flush=True)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def stack_env(environ: Mapping[str, str], bootstrap: str, data: Path) -> dict[str, str]:
    """The environment every process of the stack runs with: ``environ`` plus the broker's and the
    services' places under ``data``."""
    env = dict(environ)
    env.update(
        KAFKA_PORT=bootstrap.rpartition(":")[2],
        KAFKA_DATA=str(data / "kafka" / "data"),
        KAFKA_LOGS=str(data / "kafka" / "logs"),
        RECSIM_KAFKA_BOOTSTRAP=bootstrap,
        RECSIM_SNAPSHOT_DIR=str(data / "snapshots"),
        RECSIM_CHECKPOINT_DIR=str(data / "checkpoints"),
        RECSIM_KAFKA_GROUP_INSTANCE_ID="updater-0",
    )
    # The demo's catalogue churns: items leave it (tombstones on items) as new ones arrive, so the
    # deletion path and its dashboard panel move. Set the variable to 0 to keep every item.
    env.setdefault("RECSIM_SIM_RETIRED_ITEMS_PER_1K_EVENTS", "1")
    return env


def run(args: argparse.Namespace) -> int:
    # Ctrl-C and a supervisor's TERM both stop everything in order, even when started with SIGINT
    # ignored (a background job of a non-interactive shell inherits that).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    config = load_config(args)
    data = (REPO / args.data_dir).resolve()
    host = config.kafka.bootstrap.rpartition(":")[0]
    if host not in ("127.0.0.1", "localhost"):
        print(
            f"up: runs a local broker on 127.0.0.1; kafka.bootstrap is {config.kafka.bootstrap}",
            file=sys.stderr,
        )
        return 2
    env = stack_env(os.environ, config.kafka.bootstrap, data)
    # A fresh demo each time: the simulator's event clock runs ahead of the wall clock, so events kept
    # from an earlier run would put the watermark hours ahead of the new run's events.
    subprocess.run([str(KAFKA_SH), "stop"], env=env, check=False, capture_output=True)  # one left by a crash
    for folder in ("kafka", "snapshots", "checkpoints", "prometheus"):
        shutil.rmtree(data / folder, ignore_errors=True)
    cli = [sys.executable, "-m", "recsim_stream.cli"]
    stack = Stack()
    print(f"==> starting the Kafka broker on {config.kafka.bootstrap}", flush=True)
    subprocess.run([str(KAFKA_SH), "start"], env=env, check=True)
    try:
        stack.start("updater", [*cli, "train", "--metrics-port", str(METRICS_PORTS["updater"])], env)
        stack.start("api", [*cli, "serve", "--metrics-port", str(METRICS_PORTS["api"])], env)
        stack.start("simulator", [*cli, "simulate", "--metrics-port", str(METRICS_PORTS["simulator"])], env)
        if not args.no_prometheus and shutil.which("prometheus"):
            prom_dir = data / "prometheus"
            prom_dir.mkdir(parents=True, exist_ok=True)
            stack.start(
                "prometheus",
                [
                    "prometheus",
                    f"--config.file={REPO / 'deploy' / 'prometheus' / 'prometheus.local.yml'}",
                    f"--storage.tsdb.path={prom_dir}",
                    f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                    "--log.level=warn",
                ],
                env,
            )
        api = f"http://{config.api.host}:{config.api.port}"
        print(
            f"==> up. Query API {api} (docs {api}/docs); Prometheus http://127.0.0.1:{PROMETHEUS_PORT}\n"
            f"    try: curl -s '{api}/snapshot'; then an item id from it:\n"
            f"         curl -s -X POST {api}/recommend -H 'content-type: application/json' "
            '-d \'{"items": ["ITEM_ID"], "k": 10}\'\n'
            "    Ctrl-C stops everything.",
            flush=True,
        )
        while (problem := stack.failed()) is None:
            time.sleep(0.5)
        print(f"==> {problem}; stopping", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\n==> Ctrl-C: stopping", flush=True)
        return 0
    finally:
        stack.stop()
        subprocess.run([str(KAFKA_SH), "stop"], env=env, check=False)
