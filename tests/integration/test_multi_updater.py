"""Two updater processes as one consumer group over shared shards on a Ray head of their own, fed by
the simulator on a real broker; a rebalance is forced by starting the second updater mid-stream and
stopping it (SIGTERM) later. Every record is applied once, sessions move with their partitions,
both train into the same shards, and only the publisher writes snapshots, naming every learned row
(every snapshot is a full one here, so the last one holds every row)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from recsim_stream.checkpoint import CheckpointStore
from recsim_stream.config import CheckpointConfig, SnapshotConfig
from recsim_stream.events import BadEvent, decode_event
from recsim_stream.kafka_io import end_offsets, read_topic
from recsim_stream.local_broker import free_port
from recsim_stream.processes import PRIVATE_RAY_ENV, Children, ray_head
from recsim_stream.sharding import item_key
from recsim_stream.snapshot import SnapshotStore

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "recsim_stream.cli"]
SHARDS = 2
EVENTS = 15000  # at 300/s: the stream outlasts the start-up of both updaters on a loaded machine
# The named actors on the head, the shards' row count and the keys of rows learned from a pair.
SHARD_ROWS = (
    "import json, sys, ray\n"
    "ray.init(address=sys.argv[1], namespace='recsim', logging_level='ERROR', log_to_driver=False)\n"
    "names = sorted(a['name'] for a in ray.util.list_named_actors(all_namespaces=True))\n"
    "shards = [ray.get_actor(n, namespace='recsim') for n in names if '-shard-' in n]\n"
    "exports = ray.get([s.export.remote(None) for s in shards])\n"
    "print(json.dumps({'names': names, 'rows': sum(len(e.keys) for e in exports),\n"
    "                  'learned': [k for e in exports for k in e.keys[e.counts > 0].tolist()]}))\n"
)


def _wait(what: str, ready: Callable[[], bool], children: Children, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        children.check()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{children.log(n)[-2500:]}" for n in children.procs)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.5)


def _metric(port: int, name: str, labels: str = "") -> float:
    """One sample of a process's /metrics (0 when it is not up yet)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _done_records(log: str) -> int:
    found = re.findall(r"train: done: ([\d,]+) records", log)
    assert found, f"expected a 'train: done' line in the updater's output:\n{log[-2000:]}"
    return int(found[-1].replace(",", ""))


def _stop(children: Children, name: str, sig: signal.Signals) -> None:
    proc = children.procs[name]
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{name} did not stop on {sig.name}:\n{children.log(name)[-2500:]}") from exc
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{children.log(name)[-2500:]}"


@pytest.mark.timeout(600)
def test_two_updaters_share_partitions_shards_and_sessions(kafka_config, tmp_path):
    kafka = [
        "--kafka-bootstrap", kafka_config.bootstrap, "--kafka-events-topic", kafka_config.events_topic,
        "--kafka-items-topic", kafka_config.items_topic, "--kafka-dlq-topic", kafka_config.dlq_topic,
    ]  # fmt: skip
    checkpoints = tmp_path / "checkpoints"
    ports = {"publisher": free_port(), "second": free_port()}
    children = Children(tmp_path)
    simulator: subprocess.Popen | None = None

    def updater(name: str, snapshots: Path, env: dict[str, str]) -> None:
        children.start(
            name,
            [*CLI, "train", *kafka, "--kafka-group-id", kafka_config.group_id, "--shards", str(SHARDS),
             "--snapshot-dir", str(snapshots), "--checkpoint-dir", str(checkpoints),
             "--checkpoint-interval-s", "5", "--content-enabled", "false", "--snapshot-full-every", "1",
             "--metrics-port", str(ports[name])],
            env={**PRIVATE_RAY_ENV, "RECSIM_RAY_ADDRESS": address, **env},
        )  # fmt: skip

    def consumed(name: str) -> float:
        return _metric(ports[name], "recsim_events_consumed_total")

    def handoffs(name: str, outcome: str) -> float:
        return _metric(ports[name], "recsim_partition_handoffs_total", f'{{outcome="{outcome}"}}')

    with ray_head(children, timeout_s=90.0, object_store_bytes=200 * 1024 * 1024) as address:
        try:
            updater("publisher", tmp_path / "snapshots", {})
            _wait(
                "partitions for the publisher", lambda: "assigned at" in children.log("publisher"), children
            )
            simulator = children.start(
                "simulator",
                [*CLI, "simulate", *kafka, "--events", str(EVENTS), "--rate", "300", "--items", "300",
                 "--users", "200"],
            )  # fmt: skip
            del children.procs["simulator"]  # it is meant to finish: not one of the processes checked
            _wait("the publisher to train", lambda: consumed("publisher") >= 1000, children)
            updater("second", tmp_path / "second-snapshots", {"RECSIM_SNAPSHOT_ENABLED": "false"})
            _wait("the second updater to train", lambda: consumed("second") >= 1000, children)
            handed_to_second = handoffs("second", "exact")
            handed_before = handoffs("publisher", "exact")
            _stop(children, "second", signal.SIGTERM)
            assert simulator.wait(timeout=300) == 0
            total = sum(end_offsets(kafka_config, kafka_config.events_topic).values())
            second_records = _done_records(children.log("second"))
            _wait(
                "the publisher to read every record",
                lambda: consumed("publisher") + second_records >= total,
                children,
            )
            afresh = handoffs("publisher", "afresh") + handoffs("second", "afresh")
            handed_back = handoffs("publisher", "exact") - handed_before
            _stop(children, "publisher", signal.SIGTERM)
            shards = json.loads(
                subprocess.run(
                    [sys.executable, "-c", SHARD_ROWS, address], capture_output=True, text=True, timeout=120,
                    env={**os.environ, **PRIVATE_RAY_ENV}, check=True,
                ).stdout.strip().splitlines()[-1]
            )  # fmt: skip
        finally:
            children.stop_all()  # before the head goes: shards dying under an updater start a recovery
            if simulator is not None and simulator.poll() is None:
                simulator.kill()

    store = CheckpointStore(CheckpointConfig(dir=str(checkpoints)))
    publisher_records = store.newest().state["totals"]["records"]
    events = [decode_event(r.value) for r in read_topic(kafka_config, kafka_config.events_topic)]
    items = {e.item_id for e in events if not isinstance(e, BadEvent)}
    assert publisher_records + second_records == total
    assert (handed_to_second > 0, handed_back > 0, afresh) == (True, True, 0.0)
    assert shards["names"] == sorted(
        [f"{kafka_config.group_id}-item-names", f"{kafka_config.group_id}-shards-open-of-{SHARDS}"]
        + [f"{kafka_config.group_id}-shard-{i}-of-{SHARDS}" for i in range(SHARDS)]
    )
    assert shards["rows"] == len(items)
    snapshots = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snapshots")))
    served = snapshots.load(snapshots.latest_version()).arrays.ids.tolist()
    learned = set(shards["learned"])
    assert sorted(served) == sorted(i for i in items if item_key(i) in learned)
    assert "shared shards (found running)" in children.log("second")
    assert list((tmp_path / "snapshots").glob("v*")) != []
    assert not (tmp_path / "second-snapshots").exists()
