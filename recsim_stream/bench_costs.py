"""The per-component cost model of ``bench scaling``, measured.

Each step of the data path measured alone, in this process, on one core (median of ``repeats``):
decoding msgpack records from the simulator, session windows, pair generation (the session + pairs
pass minus the sessions-only pass), and the SGNS trainer step on in-process shards; bytes per item
of the shard tables (with Adagrad state and the key index), of the updater's id maps and sampler, of
a snapshot and of the two shipped FAISS indexes; and the snapshot write and index build
(``build_main_indexes``, as the snapshotter runs it, recall gate included) at synthetic sizes such
as 100k and 1M rows. ``sizing.cost_model`` turns these measurements into a ``CostModel``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recsim_stream.config import Config, IndexConfig, LearnConfig, SimConfig, SnapshotConfig
from recsim_stream.events import BadEvent, Event, decode_event, encode_event
from recsim_stream.kafka_io import key_partition
from recsim_stream.learner import ItemKeys
from recsim_stream.pairs import PairBatch, PairBuffer
from recsim_stream.sampler import NegativeSampler
from recsim_stream.sessions import SessionWindows
from recsim_stream.shard import ParameterShard
from recsim_stream.sim import Simulator
from recsim_stream.sizing import cost_model, rates
from recsim_stream.trainer import SgnsTrainer, local_shard_calls

Log = Callable[[str], None]

ADVANCE_EVERY = 20_000  # events between two session-window advances: the updater's poll size


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """(CPU seconds, wall seconds) of each run. CPU time of this process is the per-core cost: on a
    shared machine the wall time also counts the time other processes held the core."""
    cpu, wall = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    return cpu, wall


@dataclass
class _Stream:
    raws: list[bytes]
    events: list[Event]
    partitions: list[int]


def simulated_stream(events: int, seed: int = 7, partitions: int = 4) -> _Stream:
    """``events`` simulator events as msgpack records, decoded events and the partition of each."""
    sim = Simulator(SimConfig(items=5000, seed=seed, rate=0.0, events=events), start_ts=1.7e9)
    out = _Stream([], [], [])
    for record in sim.stream():
        if not isinstance(record, Event):
            continue
        out.raws.append(encode_event(record))
        out.events.append(record)
        out.partitions.append(key_partition(record.user_id.encode(), partitions))
        if len(out.events) >= events:
            break
    return out


def _window(stream: _Stream, config: Config, pairs: PairBuffer | None, batches: list | None = None) -> None:
    """The updater's per-event work up to pairs (Learner.add without the bookkeeping shares)."""
    windows: SessionWindows[int] = SessionWindows(config.sessions)
    items = ItemKeys()
    tokens: list[int] = []
    for i, (event, partition) in enumerate(zip(stream.events, stream.partitions, strict=True)):
        arrival = windows.add(event, partition, items.key(event.item_id))
        if pairs is not None and not isinstance(arrival, BadEvent):
            pairs.add(arrival)
            if batches is not None:
                if not arrival.repeat:
                    tokens.append(arrival.item)
                if len(pairs) >= config.learn.batch_pairs:
                    batches.append((pairs.take(), np.array(tokens, dtype=np.int64)))
                    tokens = []
        if i % ADVANCE_EVERY == ADVANCE_EVERY - 1:
            windows.advance()


def _sgns_run(config: LearnConfig, batches: list[tuple[PairBatch, np.ndarray]]) -> None:
    shards = [ParameterShard(config, i) for i in range(config.shards)]
    trainer = SgnsTrainer(config, NegativeSampler(config), *local_shard_calls(shards))
    for batch, tokens in batches:
        trainer.step(batch, tokens=tokens, ts=0.0)


def measure_stages(events: int, repeats: int, log: Log) -> dict:
    """decode, sessions, pairs and SGNS rates on one core (this process), medians of ``repeats``."""
    config = Config(learn=LearnConfig(shards=1))
    stream = simulated_stream(events)
    n = len(stream.events)
    log(f"bench scaling: cost model on {n:,} simulated events, {repeats} repeats per stage")
    limits = config.limits
    decode, decode_wall = timed(lambda: [decode_event(raw, limits) for raw in stream.raws], repeats)
    log(f"bench scaling:   decode {n / statistics.median(decode):,.0f} events/s per core")
    sessions, sessions_wall = timed(lambda: _window(stream, config, None), repeats)
    log(f"bench scaling:   sessions {n / statistics.median(sessions):,.0f} events/s per core")
    both, both_wall = timed(lambda: _window(stream, config, PairBuffer(config.pairs)), repeats)
    pair_only = [b - s for b, s in zip(both, sessions, strict=True)]
    batches: list[tuple[PairBatch, np.ndarray]] = []
    _window(stream, config, PairBuffer(config.pairs), batches)
    pairs = sum(len(b) for b, _ in batches)
    log(
        f"bench scaling:   pairs {n / statistics.median(pair_only):,.0f} events/s per core "
        f"({pairs / n:.2f} pairs/event)"
    )
    sgns, sgns_wall = timed(lambda: _sgns_run(config.learn, batches), repeats)
    log(f"bench scaling:   sgns {pairs / statistics.median(sgns):,.0f} pairs/s per core")
    return {
        "events": n,
        "pairs": pairs,
        "decode_events_per_s": rates(n, decode),
        "sessions_events_per_s": rates(n, sessions),
        "pairs_events_per_s": rates(n, pair_only),
        "pairs_per_event": pairs / n,
        "sgns_pairs_per_s": rates(pairs, sgns),
        "wall_seconds": {"decode": decode_wall, "sessions": sessions_wall, "sessions_and_pairs": both_wall,
                         "sgns": sgns_wall},
    }  # fmt: skip


def _array_bytes(*objects: object) -> int:
    return sum(v.nbytes for o in objects for v in vars(o).values() if isinstance(v, np.ndarray))


def measure_memory(rows: int) -> dict:
    """Bytes per item of a shard's tables (as allocated) and of the updater's per-item state."""
    shard = ParameterShard(LearnConfig(shards=1), 0)
    keys = np.arange(1, rows + 1, dtype=np.int64) * 7919
    shard.pull(keys)
    shard_bytes = _array_bytes(shard, shard._index)
    capacity = int(shard.stats()["capacity"])
    tracemalloc.start()
    items = ItemKeys()
    item_keys = np.array([items.key(f"item-{i:08d}") for i in range(rows)], dtype=np.int64)
    sampler = NegativeSampler(LearnConfig())
    sampler.observe(item_keys)
    updater_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "rows": rows,
        # Per row slot: what an item costs once the tables are full; the doubling of the tables (and
        # of the key index, kept at most half full) is what Target.memory_headroom covers.
        "shard_bytes_per_item": shard_bytes / capacity,
        "shard_allocated_bytes_per_item": shard_bytes / rows,
        "shard_capacity_rows": capacity,
        "updater_bytes_per_item": updater_bytes / rows,
    }


def synthetic_rows(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered input/output vectors and Zipf-like counts, shaped like a learned table."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, rows // 200), dim)).astype(np.float32)
    which = rng.integers(0, len(centres), rows)
    noise = rng.normal(scale=0.5, size=(rows, dim)).astype(np.float32)
    inputs = (centres[which] + noise) * np.float32(0.3)
    outputs = (centres[which] - noise) * np.float32(0.3)
    counts = np.maximum(1, (1e4 / np.arange(1, rows + 1) ** 0.8).astype(np.int64))[rng.permutation(rows)]
    return inputs, outputs, counts


def measure_snapshot_and_index(rows: int, config: IndexConfig, folder: Path, log: Log) -> dict:
    """Write one full snapshot of ``rows`` synthetic rows, build and gate its indexes, time searches."""
    from recsim_stream.index import build_main_indexes, ship  # imports FAISS
    from recsim_stream.snapshot import SnapshotArrays, SnapshotStore

    dim = LearnConfig().dim
    inputs, outputs, counts = synthetic_rows(rows, dim)
    arrays = SnapshotArrays(
        ids=np.array([f"item-{i:08d}" for i in range(rows)]),
        input_vectors=inputs,
        output_vectors=outputs,
        counts=counts,
        cold=np.zeros(rows, dtype=bool),
        content_vectors=inputs.copy(),  # the cold start's unit content vectors: one more dim-wide table
    )
    store = SnapshotStore(SnapshotConfig(dir=str(folder / f"snap-{rows}"), keep=1))
    (write_s,), (write_wall,) = timed(lambda: store.write(1, arrays, offsets={}, newest_event_ts=None), 1)
    snapshot_bytes = sum(p.stat().st_size for p in (folder / f"snap-{rows}").rglob("*") if p.is_file())
    shutil.rmtree(folder / f"snap-{rows}", ignore_errors=True)
    log(f"bench scaling:   {rows:,} rows: snapshot written in {write_s:.2f} CPU s; building indexes")
    built: list = []
    (build_s,), (build_wall,) = timed(
        lambda: built.append(build_main_indexes(inputs, outputs, counts, config)), 1
    )
    main = built[0]
    index_bytes = sum(len(data) for data in ship(main).files.values())
    queries = inputs[np.random.default_rng(1).choice(rows, 2000, replace=False)]
    (search_s,), _ = timed(lambda: [main.similar.search(query[None, :], 20) for query in queries], 1)
    search_qps = len(queries) / search_s
    log(
        f"bench scaling:   {rows:,} rows: indexes ({main.kind}) built and gated in {build_s:.1f} CPU s "
        f"({build_wall:.1f} s wall), "
        f"recall {dict(main.recall)}, {search_qps:,.0f} searches/s"
    )
    return {
        "rows": rows,
        "snapshot_write_s": write_s,
        "snapshot_write_wall_s": write_wall,
        "snapshot_bytes_per_item": snapshot_bytes / rows,
        "index_kind": main.kind,
        "index_build_s": build_s,
        "index_build_wall_s": build_wall,
        "index_bytes_per_item": index_bytes / rows,
        "recall": dict(main.recall),
        "search_queries_per_s": search_qps,
    }


def measure_costs(
    events: int, repeats: int, sizes: Sequence[int], log: Log, index_kind: str = "hnsw"
) -> dict:
    """Everything the cost model needs; raw runs kept beside the medians."""
    import faiss

    faiss.omp_set_num_threads(1)
    load_before = os.getloadavg()[0]
    stages = measure_stages(events, repeats, log)
    memory = measure_memory(min(sizes))
    folder = Path(tempfile.mkdtemp(prefix="recsim-scaling-"))
    try:
        index = IndexConfig(kind=index_kind)
        builds = [measure_snapshot_and_index(rows, index, folder, log) for rows in sorted(sizes)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    costs = {
        "stages": stages,
        "memory": memory,
        "builds": builds,
        "load_1m": {"before": load_before, "after": os.getloadavg()[0]},
    }
    return {"model": asdict(cost_model(costs)), **costs}
