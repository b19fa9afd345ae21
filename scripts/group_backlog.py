"""Records/s of one or several ``recsim-stream train`` processes, as one consumer group over one set of
shards, consuming a backlog already on a broker: the "through Kafka" figure for a scaled-out updater.

    .venv/bin/python scripts/group_backlog.py --kafka-bootstrap 127.0.0.1:39092 --updaters 2 --group g1

The rate is read off the group's committed offsets (an updater commits a poll only once the shards
acknowledged its training): records committed between the first commit seen and the last, over the
time between them, polled every 0.1 s. With several updaters they share a Ray head of their own
(``processes.ray_head``); the first publishes snapshots and writes checkpoints, the others do not
(README, "Running several updaters"). Fill the broker first, e.g. with
``recsim-stream simulate --events 300000 --rate 0 --kafka-bootstrap ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from recsim_stream.processes import PRIVATE_RAY_ENV, Children, ray_head

TOPIC = "events"


def committed_total(admin: KafkaAdminClient, group: str) -> int:
    offsets = admin.list_group_offsets(group).get(group, {})
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == TOPIC and meta.offset > 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka-bootstrap", required=True)
    parser.add_argument("--group", required=True, help="a consumer group id not used before")
    parser.add_argument("--updaters", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the updaters' logs and folders")
    args = parser.parse_args()
    probe = KafkaConsumer(bootstrap_servers=args.kafka_bootstrap)
    partitions = [TopicPartition(TOPIC, p) for p in sorted(probe.partitions_for_topic(TOPIC) or ())]
    backlog = sum(probe.end_offsets(partitions).values())
    probe.close()
    admin = KafkaAdminClient(bootstrap_servers=args.kafka_bootstrap)
    work = Path(tempfile.mkdtemp(prefix="group-backlog-"))
    children = Children(work)
    with contextlib.ExitStack() as stack:  # unwinds in reverse: updaters, then the Ray head, then files
        if args.keep:
            print(f"logs and folders kept in {work}", file=sys.stderr)
        else:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        env = {}
        if args.updaters > 1:
            env = {**PRIVATE_RAY_ENV, "RECSIM_RAY_ADDRESS": stack.enter_context(ray_head(children))}
        names = [f"updater-{u}" for u in range(args.updaters)]
        stack.callback(lambda: [children.stop(name) for name in reversed(names) if name in children.procs])
        for u in range(args.updaters):
            argv = [
                sys.executable, "-m", "recsim_stream.cli", "train",
                "--kafka-bootstrap", args.kafka_bootstrap, "--kafka-group-id", args.group,
                "--snapshot-dir", str(work / f"snapshots-{u}"), "--checkpoint-dir", str(work / "checkpoints"),
            ]  # fmt: skip
            publisher = {} if u == 0 else {"RECSIM_SNAPSHOT_ENABLED": "false"}
            children.start(names[u], argv, env={**env, **publisher})
        first = last = None  # (time, committed) at the first and the latest commit seen
        shown = -1
        deadline = time.monotonic() + args.timeout_s
        while time.monotonic() < deadline:
            children.check()
            done = committed_total(admin, args.group)
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
            if first is not None and done > (last or first)[1]:
                last = (now, done)
            if done != shown:
                print(f"{done:,} / {backlog:,} records committed", file=sys.stderr)
                shown = done
            if done >= backlog:
                break
            time.sleep(0.1)
        if first is None or last is None:
            raise SystemExit(f"no progress: committed {committed_total(admin, args.group):,} of {backlog:,}")
        rate = (last[1] - first[1]) / (last[0] - first[0])
        print(
            f"{args.updaters} updater(s), group {args.group}: {last[1]:,} of {backlog:,} records committed; "
            f"{last[1] - first[1]:,} in {last[0] - first[0]:.2f} s between the first commit and the last: "
            f"{rate:,.0f} records/s"
        )


if __name__ == "__main__":
    main()
