"""Fault drills: inject a real fault into the running updater, again and again, and account for every event.

``recsim-stream drill kill-updater`` kills the updater process and its local Ray cluster with SIGKILL
(as a machine loss would) at random moments while the simulator produces, restarts it each time,
and finally lets it catch up. ``recsim-stream drill kill-shard`` kills one parameter-server actor's
worker process instead; the updater recovers in process. Then an uninterrupted updater reads the
same topic from the start, and the drill compares:

- accounting: records in the final checkpoint's totals (trained or dead-lettered) against the
  records in the topic: lost = fewer, applied twice = more; dead letters on the topic against the
  distinct records they name (the dead-letter topic is at-least-once);
- time to recover: from each fault until the updater's state again holds every record it held
  when the fault struck (``recsim_state_records``: restored from the checkpoint, then replayed);
- embeddings: mean overlap of each frequent item's top-10 neighbours with the uninterrupted run's,
  next to the same overlap between two uninterrupted runs (runs differ without faults too: poll
  boundaries, hence batches and negative samples, vary).

The last stdout line is one JSON object (``--json``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from recsim_stream.checkpoint import CheckpointStore
from recsim_stream.config import CheckpointConfig, KafkaConfig
from recsim_stream.dead_letter import DeadLetter, decode_dead_letter
from recsim_stream.kafka_io import RecordProducer, end_offsets, ensure_topics, read_topic
from recsim_stream.local_broker import free_port, private_broker
from recsim_stream.processes import Children, ProcessFailed, command_line, descendants

FAULTS = ("kill-updater", "kill-shard")
SHARD_WORKER = "ray::ParameterShardActor"
# Records per poll of the second uninterrupted run: about what an updater polls from a stream produced
# at the drills' few hundred events/s (see _drill).
LIVE_POLL_RECORDS = 200
Log = Callable[[str], None]
_POLL_S = 0.25


class DrillError(RuntimeError):
    """The drill could not run (a service failed to start, a wait timed out)."""


@dataclass(frozen=True)
class DrillOptions:
    fault: str = "kill-updater"
    faults: int = 3  # how many times the fault is injected
    events: int = 30_000
    rate: float = 2_000.0  # simulated events per second while the faults strike
    items: int = 1_000
    bad_records: int = 25  # undecodable records mixed in, to be dead-lettered once each
    seed: int = 7
    checkpoint_interval_s: float = 2.0
    min_delay_s: float = 1.0  # a fault strikes this long to max_delay_s after the updater is back
    max_delay_s: float = 4.0
    neighbours: int = 10
    min_count: int = 20  # items compared by neighbours: at least this many interactions
    bootstrap: str = ""  # empty: a private broker in a temporary folder
    timeout_s: float = 180.0  # for each wait
    keep_logs: bool = False

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"drill: fault must be one of {FAULTS}, got {self.fault!r}")
        if self.faults < 1 or self.events < 1 or self.rate <= 0:
            raise ValueError("drill: faults, events and rate must be positive")
        if not 0 <= self.min_delay_s <= self.max_delay_s:
            raise ValueError("drill: expected 0 <= min_delay_s <= max_delay_s")


# -- pure parts ------------------------------------------------------------------------------------


def learned_rows(shard_states: list[dict], min_count: int) -> dict[int, np.ndarray]:
    """key -> input vector of every live row with at least ``min_count`` interactions."""
    rows = {}
    for state in shard_states:
        keep = np.asarray(state["live"], bool) & (np.asarray(state["counts"]) >= min_count)
        for key, vector in zip(
            np.asarray(state["keys"])[keep].tolist(), np.asarray(state["input"])[keep], strict=True
        ):
            rows[key] = vector
    return rows


def neighbour_overlap(a: dict[int, np.ndarray], b: dict[int, np.ndarray], k: int) -> float | None:
    """Mean share of each common item's k nearest neighbours (cosine, among the common items) that
    both tables agree on; None with too few common items."""
    common = sorted(set(a) & set(b))
    if len(common) <= k:
        return None

    def neighbours(table: dict[int, np.ndarray]) -> np.ndarray:
        vectors = np.vstack([table[key] for key in common]).astype(np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :k]

    left, right = neighbours(a), neighbours(b)
    shared = [len(set(x.tolist()) & set(y.tolist())) for x, y in zip(left, right, strict=True)]
    return float(np.mean(shared)) / k


def dead_letter_sources(letters: list[DeadLetter]) -> set[tuple[str, int, int]]:
    return {(letter.topic, letter.partition, letter.offset) for letter in letters}


# -- the drill -------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One updater lineage: its group, checkpoints and snapshots."""

    name: str
    group: str
    folder: Path
    instance: str = ""
    max_poll_records: int = 0  # 0: the configured default

    def argv(self, kafka: KafkaConfig, options: DrillOptions, metrics_port: int) -> list[str]:
        argv = [
            sys.executable, "-m", "recsim_stream.cli", "train",
            "--kafka-bootstrap", kafka.bootstrap, "--kafka-events-topic", kafka.events_topic,
            "--kafka-items-topic", kafka.items_topic, "--kafka-dlq-topic", kafka.dlq_topic,
            "--kafka-group-id", self.group, "--checkpoint-dir", str(self.folder / "checkpoints"),
            "--checkpoint-interval-s", str(options.checkpoint_interval_s),
            "--snapshot-dir", str(self.folder / "snapshots"), "--metrics-port", str(metrics_port),
        ]  # fmt: skip
        if self.instance:
            argv += ["--kafka-group-instance-id", self.instance]
        if self.max_poll_records:
            argv += ["--kafka-max-poll-records", str(self.max_poll_records)]
        return argv


def run(options: DrillOptions, log: Log) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"recsim-drill-{options.fault}-"))
    try:
        with _broker(options, folder) as bootstrap:
            result = _drill(options, bootstrap, folder, log)
    except BaseException:
        log(f"drill: logs kept in {folder}")
        raise
    if options.keep_logs:
        log(f"drill: logs in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return result


@contextmanager
def _broker(options: DrillOptions, folder: Path) -> Iterator[str]:
    if options.bootstrap:
        yield options.bootstrap
        return
    with private_broker(folder / "kafka") as bootstrap:
        yield bootstrap


def _drill(options: DrillOptions, bootstrap: str, folder: Path, log: Log) -> dict:
    kafka = KafkaConfig.isolated(bootstrap, "drill")
    ensure_topics(kafka)
    _send_bad_records(kafka, options.bad_records)
    children = Children(folder)
    rng = random.Random(options.seed)
    faulted = _Run("faulted", kafka.group_id, folder / "faulted", instance="drill-updater")
    steady = _Run("uninterrupted", f"{kafka.group_id}-uninterrupted", folder / "uninterrupted")
    # A second uninterrupted run: how much two runs without faults differ, the yardstick for the
    # faulted run's overlap. Both read the whole topic at the end, so with the same poll size they
    # polled, batched and sampled alike (overlap 1.0, seen), while the faulted run polls a live stream
    # a few hundred records at a time; this one polls as small, so the yardstick has that difference.
    again = _Run(
        "uninterrupted-again", f"{kafka.group_id}-again", folder / "again", max_poll_records=LIVE_POLL_RECORDS
    )
    try:
        children.start(
            "simulator",
            [sys.executable, "-m", "recsim_stream.cli", "simulate", "--events", str(options.events),
             "--rate", str(options.rate), "--items", str(options.items), "--seed", str(options.seed),
             "--kafka-bootstrap", bootstrap, "--kafka-events-topic", kafka.events_topic,
             "--kafka-items-topic", kafka.items_topic],
        )  # fmt: skip
        recoveries, name, port = _inject(options, kafka, faulted, children, rng, log)
        _wait(
            lambda: children.procs["simulator"].poll() is not None,
            "the simulator to finish",
            options,
            children,
        )
        if children.procs["simulator"].returncode != 0:
            raise DrillError(f"the simulator failed:\n{children.log('simulator')[-2000:]}")
        total = sum(end_offsets(kafka, kafka.events_topic).values())
        log(f"drill: the topic holds {total:,} records; letting the updater catch up")
        _finish(options, faulted, children, total, name, port)
        letters = _dead_letters(kafka)  # before the uninterrupted runs add theirs
        for lineage in (steady, again):
            log(f"drill: running an {lineage.name} updater over the same records")
            port = free_port()
            children.start(lineage.name, lineage.argv(kafka, options, port))
            _finish(options, lineage, children, total, lineage.name, port)
    finally:
        children.stop_all()
    return _account(options, letters, faulted, steady, again, total, recoveries)


def _inject(
    options: DrillOptions, kafka: KafkaConfig, run: _Run, children: Children, rng: random.Random, log: Log
) -> tuple[list[float], str, int]:
    """Inject the fault ``options.faults`` times; returns each recovery time in seconds (from the
    fault until the updater's state again holds every record it held when the fault struck), and
    the name and metrics port of the updater left running."""
    recoveries: list[float] = []
    name, port = "faulted-0", free_port()
    children.start(name, run.argv(kafka, options, port))
    _wait(lambda: _state_records(port) > 0, "the updater to apply records", options, children)
    for fault in range(options.faults):
        time.sleep(rng.uniform(options.min_delay_s, options.max_delay_s))
        reached = _state_records(port)
        struck_at = time.monotonic()
        if options.fault == "kill-updater":
            children.kill(name)
            name, port = f"faulted-{fault + 1}", free_port()
            children.start(name, run.argv(kafka, options, port))
            recovered = lambda port=port, reached=reached: _state_records(port) >= reached  # noqa: E731
        else:
            recoveries_before = _metric(port, "recsim_recoveries_total")
            _kill_a_shard(children.procs[name].pid, rng)

            def recovered(port=port, reached=reached, before=recoveries_before) -> bool:
                return _metric(port, "recsim_recoveries_total") > before and _state_records(port) >= reached

        log(
            f"drill: fault {fault + 1}/{options.faults} ({options.fault}) with {reached:,.0f} records applied"
        )
        _wait(recovered, "the updater to recover", options, children)
        recoveries.append(time.monotonic() - struck_at)
        log(f"drill: recovered in {recoveries[-1]:.1f} s")
    return recoveries, name, port


def _metric(port: int, name: str) -> float:
    """A sample of the updater's metrics (summed over labels); -1 while it does not answer."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return -1.0
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total, found = total + sample.value, True
    return total if found else -1.0


def _state_records(port: int) -> float:
    return _metric(port, "recsim_state_records")


def _kill_a_shard(updater_pid: int, rng: random.Random) -> None:
    workers = sorted(p for p in descendants(updater_pid) if command_line(p).startswith(SHARD_WORKER))
    if not workers:
        raise DrillError(f"no {SHARD_WORKER} worker found below the updater (pid {updater_pid})")
    os.kill(rng.choice(workers), signal.SIGKILL)


def _finish(options: DrillOptions, run: _Run, children: Children, total: int, name: str, port: int) -> None:
    """Let updater ``name`` run until its state holds every record, then stop it (a last checkpoint)."""
    _wait(
        lambda: _state_records(port) >= total, f"{run.name} to apply all {total:,} records", options, children
    )
    children.stop(name, timeout_s=options.timeout_s)
    if children.procs[name].returncode != 0:
        raise DrillError(
            f"{name} exited with {children.procs[name].returncode}:\n{children.log(name)[-2000:]}"
        )


def _account(
    options: DrillOptions,
    letters: list[DeadLetter],
    faulted: _Run,
    steady: _Run,
    again: _Run,
    total: int,
    recoveries: list[float],
) -> dict:
    a, b, c = _final_state(faulted), _final_state(steady), _final_state(again)
    sources = dead_letter_sources(letters)
    records = a["totals"]["records"]
    rows_a, rows_b, rows_c = (learned_rows(x["shards"], options.min_count) for x in (a, b, c))
    overlap = neighbour_overlap(rows_a, rows_b, options.neighbours)
    baseline = neighbour_overlap(rows_c, rows_b, options.neighbours)
    return {
        **{k: v for k, v in asdict(options).items() if k not in ("bootstrap", "keep_logs", "timeout_s")},
        "records_in_topic": total,
        "records_accounted": records,
        "events_trained": a["totals"]["events"],
        "dead_lettered": a["totals"]["dead_lettered"],
        "events_lost": max(0, total - records),
        "events_applied_twice": max(0, records - total),
        "uninterrupted_records": b["totals"]["records"],
        "dead_letter_records": len(letters),
        "dead_letter_sources": len(sources),
        "dead_letter_duplicates": len(letters) - len(sources),
        "recover_s": [round(s, 2) for s in recoveries],
        "recover_median_s": round(float(np.median(recoveries)), 2),
        "recover_max_s": round(max(recoveries), 2),
        "items_compared": len(set(rows_a) & set(rows_b)),
        "neighbour_overlap": None if overlap is None else round(overlap, 3),
        "neighbour_overlap_uninterrupted_runs": None if baseline is None else round(baseline, 3),
    }


def _dead_letters(kafka: KafkaConfig) -> list[DeadLetter]:
    decoded = [decode_dead_letter(r.value) for r in read_topic(kafka, kafka.dlq_topic)]
    return [letter for letter in decoded if isinstance(letter, DeadLetter)]


def _final_state(run: _Run) -> dict:
    checkpoint = CheckpointStore(CheckpointConfig(dir=str(run.folder / "checkpoints"))).newest()
    if checkpoint is None:
        raise DrillError(f"{run.name}: no checkpoint in {run.folder / 'checkpoints'}")
    return checkpoint.state


def _send_bad_records(kafka: KafkaConfig, count: int) -> None:
    producer = RecordProducer(kafka)
    try:
        for i in range(count):
            producer.send_raw(
                kafka.events_topic, f"bad-user-{i}".encode(), b"\xc1not msgpack" + bytes([i % 256])
            )
        producer.flush()
    finally:
        producer.close()


def _wait(ready: Callable[[], bool], what: str, options: DrillOptions, children: Children) -> None:
    deadline = time.monotonic() + options.timeout_s
    while not ready():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{children.log(n)[-1500:]}" for n in children.procs)
            raise DrillError(f"timed out after {options.timeout_s:.0f} s waiting for {what}\n{logs}")
        for name, proc in children.procs.items():
            if name != "simulator" and proc.poll() not in (None, 0, -signal.SIGKILL, -signal.SIGINT):
                raise ProcessFailed(f"{name} exited with {proc.returncode}:\n{children.log(name)[-3000:]}")
        time.sleep(_POLL_S)
