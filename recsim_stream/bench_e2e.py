"""``recsim-stream bench e2e``: the whole data path measured through the real components.

A broker (its own, on a free port, or ``--bootstrap``), the updater (``recsim-stream train``) and the
query API (``recsim-stream serve``) run as child processes exactly as deployed; this process drives the
simulator into Kafka at a fixed rate through ``RecordProducer``, and a separate query process fires
``POST /recommend`` and ``GET /items/{id}/similar`` while the stream runs, so query latency is measured
under ingest and training load on the same cores.

Freshness is wall-clock: for each item listed while the stream runs, the time from producing its
first click (the wall time of the send, which is also the Kafka record's timestamp) to the first
``GET /items/{id}`` that shows the item with at least one learned interaction (its own behaviour
reached the served vectors; a cold-start vector from metadata alone does not count). Never the
simulator's event time, whose clock runs far ahead of the wall clock. Deletion is measured the same
way: while the stream runs, the producer deletes a served item from the catalogue now and then (a
tombstone on ``items``), and the query process times it from the send to the first
``GET /items/{id}`` answering 404. The summary also records the
machine's 1-minute load average, sampled through the run: on a shared 2-core machine the figures mean
little without it. Everything started here is stopped on the way out, also on Ctrl-C and on failure.
"""

from __future__ import annotations

import http.client
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from recsim_stream.config import ApiConfig, KafkaConfig, SimConfig, load_config
from recsim_stream.events import ItemMeta
from recsim_stream.kafka_io import RecordProducer, ensure_topics
from recsim_stream.local_broker import free_port, private_broker
from recsim_stream.pacing import RateLimiter
from recsim_stream.processes import Children
from recsim_stream.processes import ppid as parent_of
from recsim_stream.sim import Simulator

Log = Callable[[str], None]

_PROGRESS_EVERY_S = 5.0
_SHIP_EVERY_S = 0.2  # how often clicks and first clicks of new items go to the query process
_PROBE_EVERY_S = 0.2  # how often the query process polls the served version (and new items on a change)
BULK_PROBED = 50  # items of a bulk deletion timed until the API answers 404
_READY_TIMEOUT_S = 180.0


class BenchError(RuntimeError):
    """A component did not start, died, or did not finish its work in time."""


@dataclass(frozen=True)
class E2EOptions:
    items: int = 5000  # initial catalogue size (sim.items)
    rate: float = 2000.0  # events per wall second in the paced phase
    duration: float = 60.0  # seconds of the paced phase
    full_speed_s: float = 0.0  # seconds of a following unpaced phase (0 = none)
    qps: float = 50.0  # queries per second from the query process
    bootstrap: str = ""  # use this broker instead of starting one
    snapshot_interval_s: float = 1.0
    drain_timeout_s: float = 180.0  # how long the updater may take to train what was produced
    fresh_grace_s: float = 15.0  # after draining, how long new items may take to be served
    seed: int = 7
    plot: str = ""  # PNG path: freshness per new item and query latency over time
    keep_logs: bool = False  # keep the folder with the children's logs (always kept on failure)
    # After the run (queries stopped), wait up to this long for the API to serve the whole listed
    # catalogue, so that ``catalogue_served_s`` is measured even when it takes longer than the run.
    catalogue_wait_s: float = 0.0
    # Before the paced phase, wait up to this long for the API to serve the whole listed catalogue
    # from a full snapshot with approximate indexes (``steady_state``): a deployment whose catalogue
    # was listed long before, instead of a stream that starts while the updater still takes in (and
    # encodes) the listing and the API searches it exactly. 0 = start at once.
    catalogue_first_s: float = 0.0
    # Niceness of the training side: the updater (and its Ray workers, which inherit it) and the
    # simulator producing in this process; the broker, the query API and the query process keep
    # theirs. As a deployment isolates the query service from training on shared cores.
    training_niceness: int = 0
    # CPUs of the query API (a taskset list, e.g. "1"), as a deployment gives the query service cores
    # of its own: the broker, the updater with its Ray workers and the simulator run on the others.
    # The query process runs beside the API: it stands in for clients on other machines, and on the
    # training CPUs its own waits for a core counted as query latency (10% of queries over 10 ms as
    # it saw them, 4.6% as the API did, at 1M items). Empty: every process may run anywhere.
    api_cpus: str = ""
    deletions_per_s: float = 0.2  # served items deleted from the catalogue while the stream runs
    # Items of the initial catalogue deleted at once halfway through the paced phase (a category
    # taken down): BULK_PROBED of them, confirmed served just before, are timed until the API answers
    # 404; the others only leave the query subjects.
    bulk_deletions: int = 0

    def __post_init__(self) -> None:
        checks = {
            "items": self.items >= 1,
            "rate": self.rate >= 0 and math.isfinite(self.rate),
            "duration": self.duration > 0,
            "full_speed_s": self.full_speed_s >= 0,
            "qps": self.qps > 0,
            "snapshot_interval_s": self.snapshot_interval_s > 0,
            "drain_timeout_s": self.drain_timeout_s > 0,
            "fresh_grace_s": self.fresh_grace_s >= 0,
            "catalogue_wait_s": self.catalogue_wait_s >= 0,
            "catalogue_first_s": self.catalogue_first_s >= 0,
            "training_niceness": 0 <= self.training_niceness <= 19,
            "api_cpus": not self.api_cpus or _split_cpus(self.api_cpus) is not None,
            "deletions_per_s": self.deletions_per_s >= 0 and math.isfinite(self.deletions_per_s),
            "bulk_deletions": 0 <= self.bulk_deletions <= self.items,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bench e2e: invalid {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")


# --- pure helpers -------------------------------------------------------------------------------


@contextmanager
def _pinned(cpus: set[int], after: set[int]) -> Iterator[None]:
    """This thread (and what it starts meanwhile) on ``cpus``, then on ``after``."""
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, after)


def _split_cpus(api_cpus: str) -> tuple[set[int], set[int]] | None:
    """(the API's CPUs, the others') from a list like "1" or "0,2-3"; None unless both are non-empty
    subsets of the CPUs this process may use."""
    allowed, cpus = os.sched_getaffinity(0), set()
    try:
        for part in api_cpus.split(","):
            first, dash, last = part.partition("-")
            cpus.update(range(int(first), int(last if dash else first) + 1))
    except ValueError:
        return None
    others = allowed - cpus
    return (cpus, others) if cpus and cpus <= allowed and others else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def metric_totals(text: str) -> dict[str, float]:
    """Prometheus exposition text -> sample name -> value summed over its labels; also, per label
    value of a sample with one label besides a histogram's ``le``, ``name{label=value}``."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            totals[sample.name] = totals.get(sample.name, 0.0) + value
            if len(sample.labels) == 1:  # (a histogram's buckets carry ``le`` as well: left out)
                ((label, label_value),) = sample.labels.items()
                key = f"{sample.name}{{{label}={label_value}}}"
                totals[key] = totals.get(key, 0.0) + value
    return totals


def snapshot_pauses(updater: dict[str, float]) -> dict[str, dict[str, float | int]]:
    """How long the updater's loop was held per snapshot kind, over its whole run (catalogue included)."""
    out: dict[str, dict[str, float | int]] = {}
    for kind in ("full", "delta"):
        count = int(updater.get(f"recsim_snapshot_pause_seconds_count{{kind={kind}}}", 0))
        total = updater.get(f"recsim_snapshot_pause_seconds_sum{{kind={kind}}}", 0.0)
        out[kind] = {
            "count": count,
            "sum_s": round(total, 2),
            "mean_s": round(total / count, 3) if count else 0.0,
        }
    return out


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# --- processes ----------------------------------------------------------------------------------


class PeakRss:
    """Samples VmHWM (peak resident set) of watched processes and all their descendants; a process's
    peak is kept after it exits. Sampling, not a final read, because Ray's workers and the children
    themselves are gone by the time the benchmark reports."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.roots: dict[str, int] = {}
        self.peak_kb: dict[int, tuple[str, int]] = {}  # pid -> (root name, peak kB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def mb_by_root(self) -> dict[str, float]:
        out = {name: 0.0 for name in self.roots}
        for name, kb in self.peak_kb.values():
            out[name] += kb / 1024.0
        return {name: round(mb, 1) for name, mb in out.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                ppid = parent_of(int(entry.name))
                if ppid is not None:
                    children.setdefault(ppid, []).append(int(entry.name))
        roots = dict(self.roots)
        other_roots = set(roots.values())
        for name, root in roots.items():
            todo = [root]
            while todo:
                pid = todo.pop()
                todo.extend(child for child in children.get(pid, ()) if child not in other_roots)
                kb = _vm_hwm_kb(pid)
                if kb is not None and kb > self.peak_kb.get(pid, (name, 0))[1]:
                    self.peak_kb[pid] = (name, kb)


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


@contextmanager
def broker(options: E2EOptions, folder: Path, log: Log) -> Iterator[tuple[str, int | None]]:
    """(bootstrap, broker pid or None): ``options.bootstrap`` as is, or a fresh broker stopped on exit."""
    if options.bootstrap:
        yield options.bootstrap, None
        return
    log("bench e2e: starting a broker")
    with private_broker(folder / "kafka", _READY_TIMEOUT_S) as bootstrap:
        pid_file = folder / "kafka" / "logs" / "kafka.pid"
        yield bootstrap, int(pid_file.read_text()) if pid_file.exists() else None


def _get(client: httpx.Client, url: str) -> httpx.Response | None:
    try:
        return client.get(url, timeout=5.0)
    except httpx.HTTPError:
        return None


def _wait_for(what: str, ready: Callable[[], bool], children: Children, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        children.check()
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready within {timeout_s:.0f} s")
        time.sleep(0.1)


# --- the query process ----------------------------------------------------------------------------


class _Answer(NamedTuple):
    status_code: int
    server_timing: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection:
    """One keep-alive HTTP/1.1 connection of the query process, on the standard library's client.

    This process shares the API's core in ``--api-cpus`` runs, so its own CPU per request is time the
    API may wait for: httpx took 0.28-0.41 ms of CPU a request against 0.12-0.16 ms here
    (scripts/http_client_cost.py). Errors close the connection (the next
    request reconnects) and return None, as a failed query."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, payload: object = None) -> _Answer | None:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=5.0)
            self._conn.request(method, path, body, headers)
            response = self._conn.getresponse()
            return _Answer(response.status, response.getheader("server-timing"), response.read())
        except (OSError, http.client.HTTPException):
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def query_worker(
    api: str, inbox: mp.Queue, stop: mp.Event, shared: mp.Array, out_path: str, qps: float, seed: int
) -> None:
    """Runs in its own process: queries at up to ``qps`` (one at a time, like one client) on items the
    API is known to serve, while a thread probes new items until each is served with a learned
    interaction; the probes run beside the queries so that many waiting items neither slow the query
    rate nor coarsen the freshness measurement. The same thread probes each item the producer deleted
    until the API answers 404. ``shared`` holds
    (queries, failed, new items waiting, new items fresh, deletions waiting, deletions served no more)
    for progress lines; the full record goes to ``out_path`` as JSON.

    Queries use only items the API has already returned (from a probe or a result) and that were not
    deleted since, so a 404 or 503 is a real failure, not an item that has not reached the snapshot yet."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through ``stop``
    # The prober thread shares this process's GIL: at Python's default 5 ms switch interval a query
    # whose answer came while the prober ran Python could wait the whole interval before its clock
    # stopped, the client's delay and not the API's. The API runs at api.gil_switch_ms for the same
    # reason.
    sys.setswitchinterval(ApiConfig().gil_switch_ms / 1000.0)
    rng = random.Random(seed)
    lock = threading.Lock()
    clicked: deque[str] = deque(maxlen=4096)  # items seen in the stream so far, newest last
    served: list[str] = []  # items the API has returned: safe query subjects
    served_set: set[str] = set()
    pending: dict[str, float] = {}  # new item -> wall time its first click was produced
    fresh: list[tuple[str, float, float]] = []  # (item, first click produced, first served learned)
    asked: set[str] = set()  # pending items asked about since the served version last changed
    queries: list[tuple[float, str, int, float]] = []  # (wall time, endpoint, status, ms)
    server_ms: list[float | None] = []  # the API's own time to each answer (Server-Timing), as queries
    snapshots: dict[int, tuple[float, float]] = {}  # version served -> (written, loaded by the API)
    served_items: dict[int, tuple[float, int]] = {}  # version served -> (loaded by the API, items)
    deleted: set[str] = set()  # items the producer deleted: never query subjects again
    deleting: dict[str, float] = {}  # deleted item -> wall time its tombstone was sent
    gone: list[tuple[str, float, float]] = []  # (item, tombstone sent, first answered 404)

    def learn_served(ids: Sequence[str]) -> None:
        with lock:
            for item in ids:
                if item not in served_set and item not in deleted and len(served) < 50_000:
                    served_set.add(item)
                    served.append(item)

    def probe(client: _Connection, item: str) -> bool:
        """Whether ``item`` is served with at least one learned interaction."""
        response = client.request("GET", f"/items/{quote(item, safe='')}")
        if response is None or response.status_code != 200:
            return False
        learn_served([item])
        return response.json()["interactions"] >= 1

    def probe_deleted(client: _Connection) -> None:
        with lock:
            waiting = list(deleting.items())
        for item, sent in waiting:
            response = client.request("GET", f"/items/{quote(item, safe='')}")
            if response is not None and response.status_code == 404:
                with lock:
                    gone.append((item, sent, time.time()))
                    del deleting[item]

    def probe_loop() -> None:
        # A new item can only become fresh when the API swaps in a new version, so the items still
        # waiting are asked about once per version served (and when they arrive), not every round:
        # asking each one 5 times a second was 1-3x the query load on the API's core at 2,000-4,000
        # events/s, most of it for items that never become fresh (clicked only alone in a session).
        client = _Connection(api)
        asked_at: int | None = None  # the version served when the waiting items were last asked about
        try:
            while not stop.is_set():
                response = client.request("GET", "/snapshot")
                version = None
                if response is not None and response.status_code == 200:
                    info = response.json()
                    version = info["version"]
                    snapshots.setdefault(version, (info["created_at"], info["loaded_at"]))
                    served_items.setdefault(version, (info["loaded_at"], info["items"]))
                with lock:
                    waiting = [(i, t) for i, t in pending.items() if version != asked_at or i not in asked]
                    bootstrap = rng.sample(list(clicked), min(5, len(clicked))) if len(served) < 20 else []
                if version != asked_at:
                    asked.clear()
                asked_at = version
                for item, produced in waiting:
                    asked.add(item)
                    if probe(client, item):
                        with lock:
                            fresh.append((item, produced, time.time()))
                            del pending[item]
                for item in bootstrap:  # until the first results: find a few served items
                    probe(client, item)
                probe_deleted(client)
                shared[2], shared[3], shared[4], shared[5] = (
                    len(pending),
                    len(fresh),
                    len(deleting),
                    len(gone),
                )
                stop.wait(_PROBE_EVERY_S)
        finally:
            client.close()

    def query(client: _Connection) -> None:
        with lock:
            subjects = [rng.choice(served) for _ in range(3)]
            latest = list(clicked)[-1:]
        if rng.random() < 0.5:
            endpoint = "recommend"
            started = time.perf_counter()
            response = client.request("POST", "/recommend", {"items": subjects + latest, "k": 20})
        else:
            endpoint = "similar"
            started = time.perf_counter()
            response = client.request("GET", f"/items/{quote(subjects[0], safe='')}/similar?k=20")
        ms = (time.perf_counter() - started) * 1000.0
        status = 0 if response is None else response.status_code
        queries.append((time.time(), endpoint, status, ms))
        server_ms.append(None if response is None else server_timing_ms(response.server_timing))
        shared[0] += 1
        if status == 200:
            learn_served([r["item_id"] for r in response.json()["results"]])
        else:
            shared[1] += 1

    prober = threading.Thread(target=probe_loop, daemon=True)
    prober.start()
    next_query = time.monotonic()
    client = _Connection(api)
    try:
        while not stop.is_set():
            while not inbox.empty():
                clicks, first_clicks, tombstones, unprobed = inbox.get()
                with lock:
                    clicked.extend(clicks)
                    pending.update(first_clicks)
                    deleting.update(tombstones)
                    gone_now = {*tombstones, *unprobed} & served_set
                    deleted.update(tombstones, unprobed)
                    if gone_now:
                        served_set.difference_update(gone_now)
                        served[:] = [item for item in served if item not in gone_now]
            if served and time.monotonic() >= next_query:
                query(client)
                next_query = max(next_query + 1.0 / qps, time.monotonic() - 1.0)
            delay = next_query - time.monotonic() if served else _SHIP_EVERY_S
            stop.wait(max(0.0, min(delay, _SHIP_EVERY_S)))
    finally:
        client.close()
    prober.join()
    with lock:
        record = {
            "queries": queries,
            "server_ms": server_ms,
            "fresh": fresh,
            "unresolved": pending,
            "gone": gone,
            "deletions_unresolved": deleting,
            "snapshots": list(snapshots.values()),
            "served_items": sorted(served_items.values()),
        }
    Path(out_path).write_text(json.dumps(record))


# --- the benchmark --------------------------------------------------------------------------------


@dataclass
class _Produced:
    events: int = 0
    items: int = 0
    new_items_clicked: int = 0
    deletions: int = 0  # tombstones sent for served items
    bulk_deletions: int = 0  # tombstones sent at once (options.bulk_deletions)
    bulk_probed: set[str] = field(default_factory=set)  # of them, those timed until the API answers 404
    listing_started: float = 0.0  # wall time the first item of the catalogue was produced
    catalogue_listed: float = 0.0  # wall time the last item of the initial catalogue was produced
    started: float = 0.0  # wall time of the first event
    catalogue_first_waited_s: float = 0.0  # how long the stream waited for the catalogue (catalogue_first_s)
    paced_end: float = 0.0  # wall time the paced phase ended
    at_paced_end: dict[str, float] | None = None  # the updater's metrics then, if a full-speed phase ran
    ended: float = 0.0  # wall time the last record was acknowledged


class _Probe:
    """The running services as the benchmark sees them: metrics of the updater and the API."""

    def __init__(self, updater_metrics: str, api: str) -> None:
        self.updater_metrics = updater_metrics
        self.api = api
        self.client = httpx.Client()
        self.loads: list[float] = [os.getloadavg()[0]]  # 1-minute load average at each progress line

    def served(self) -> dict:
        """What the API serves now: GET /snapshot's version, index and delta figures."""
        response = _get(self.client, f"{self.api}/snapshot")
        if response is None or response.status_code != 200:
            return {}
        info = response.json()
        keys = ("version", "kind", "items", "index_kind", "index_shipped", "delta_rows")
        return {key: info.get(key) for key in keys}

    def serves(self, item: str) -> bool:
        """Whether the API serves ``item`` now."""
        response = _get(self.client, f"{self.api}/items/{quote(item, safe='')}")
        return response is not None and response.status_code == 200

    def updater(self) -> dict[str, float]:
        response = _get(self.client, self.updater_metrics)
        return metric_totals(response.text) if response is not None and response.status_code == 200 else {}

    def api_metrics(self) -> dict[str, float]:
        return metric_totals(self.api_metrics_text())

    def api_metrics_text(self) -> str:
        response = _get(self.client, f"{self.api}/metrics")
        return response.text if response is not None and response.status_code == 200 else ""


def _progress_line(produced: _Produced, probe: _Probe, shared: mp.Array, phase: str) -> str:
    probe.loads.append(os.getloadavg()[0])
    trained = probe.updater().get("recsim_events_trained_total", 0.0)
    swaps = probe.api_metrics().get("recsim_index_swaps_total", 0.0)
    return (
        f"bench e2e [{phase}]: {produced.events:,} events sent, {trained:,.0f} trained, "
        f"{shared[0]:,} queries ({shared[1]:,} failed), {swaps:,.0f} swaps, "
        f"new items fresh {shared[3]:,} (waiting {shared[2]:,}), "
        f"deleted and gone {shared[5]:,} (waiting {shared[4]:,})"
    )


def _produce(
    options: E2EOptions,
    producer: RecordProducer,
    inbox: mp.Queue,
    children: Children,
    progress: Callable[[str, _Produced], None],
    updater_metrics: Callable[[], dict[str, float]],
    catalogue_served: Callable[[], bool],
    serves: Callable[[str], bool],
) -> _Produced:
    """The simulator into Kafka: ``duration`` s at ``rate``, then ``full_speed_s`` s unpaced; every
    ``1 / deletions_per_s`` s a tombstone for a recently clicked item of the initial catalogue that
    the API serves (``serves``), and halfway through the paced phase ``bulk_deletions`` at once."""
    sim_config = SimConfig(items=options.items, seed=options.seed, rate=options.rate)
    simulator = Simulator(sim_config, start_ts=time.time())
    listed_new: set[str] = set()
    seen_new: set[str] = set()
    clicks: list[str] = []
    first_clicks: dict[str, float] = {}
    tombstones: dict[str, float] = {}  # item deleted -> wall time of its tombstone's send
    deleted: set[str] = set()
    out = _Produced()
    limiter = RateLimiter(options.rate)
    phase, phase_end = "paced", float("inf")
    ship_at = report_at = time.monotonic()
    delete_at = bulk_at = math.inf
    catalogue = options.items
    initial: list[str] = []  # the initial catalogue's items, in listing order
    for record in simulator.stream():
        if isinstance(record, ItemMeta):
            producer.send_item(record)
            out.items += 1
            if out.items <= catalogue:
                initial.append(record.item_id)
            if out.items == 1:
                out.listing_started = time.time()
            if out.items == catalogue:
                out.catalogue_listed = time.time()
            if out.items > catalogue:
                listed_new.add(record.item_id)
            continue
        if out.events == 0:
            if options.catalogue_first_s:
                waited = time.monotonic()
                _wait_for(
                    "the catalogue to be served from an approximate full snapshot",
                    catalogue_served,
                    children,
                    options.catalogue_first_s,
                )
                out.catalogue_first_waited_s = time.monotonic() - waited
            out.started = time.time()
            phase_end = time.monotonic() + options.duration
            delete_at = (
                time.monotonic() + 1.0 / options.deletions_per_s if options.deletions_per_s else math.inf
            )
            bulk_at = time.monotonic() + options.duration / 2 if options.bulk_deletions else math.inf
        if phase == "paced":
            limiter.admit()
        producer.send_event(record)
        out.events += 1
        clicks.append(record.item_id)
        if record.item_id in listed_new and record.item_id not in seen_new:
            seen_new.add(record.item_id)
            first_clicks[record.item_id] = time.time()
        if out.events % 64:
            continue
        now = time.monotonic()
        if now >= delete_at:
            # The newest click's item of the initial catalogue, confirmed served just before its tombstone.
            item = next((i for i in reversed(clicks) if i not in listed_new and i not in deleted), None)
            if item is not None and serves(item):
                deleted.add(item)
                out.deletions += 1
                producer.send_item_deletion(item)
                tombstones[item] = time.time()
            delete_at = now + 1.0 / options.deletions_per_s
        if now >= bulk_at:
            bulk_at = math.inf
            chosen, out.bulk_probed = _delete_in_bulk(
                options, producer, inbox, serves, [i for i in initial if i not in deleted]
            )
            out.bulk_deletions = len(chosen)
            deleted.update(chosen)
        if now >= ship_at:
            inbox.put((clicks[-256:], first_clicks, tombstones, []))
            out.new_items_clicked += len(first_clicks)
            clicks, first_clicks, tombstones = [], {}, {}
            ship_at = now + _SHIP_EVERY_S
        if now >= report_at:
            children.check()
            progress(phase, out)
            report_at = now + _PROGRESS_EVERY_S
        if now >= phase_end:
            if phase == "full speed" or options.full_speed_s == 0:
                break
            out.paced_end, out.at_paced_end = time.time(), updater_metrics()
            phase, phase_end = "full speed", now + options.full_speed_s
    producer.flush()
    out.ended = time.time()
    out.paced_end = out.paced_end or out.ended
    inbox.put((clicks[-256:], first_clicks, tombstones, []))
    out.new_items_clicked += len(first_clicks)
    return out


def _delete_in_bulk(
    options: E2EOptions,
    producer: RecordProducer,
    inbox: mp.Queue,
    serves: Callable[[str], bool],
    candidates: list[str],
) -> tuple[list[str], set[str]]:
    """Tombstones for ``options.bulk_deletions`` of ``candidates`` at once; returns the items deleted
    and the ones to time (confirmed served just before). The query process hears of them first, so
    that no query asks for an item while its deletion is on its way."""
    rng = random.Random(options.seed)
    chosen = rng.sample(candidates, min(options.bulk_deletions, len(candidates)))
    probed = {item for item in chosen[:BULK_PROBED] if serves(item)}
    inbox.put(([], {}, {}, [item for item in chosen if item not in probed]))
    time.sleep(3 * _SHIP_EVERY_S)  # the query process reads its inbox at least this often
    sent = time.time()
    for item in chosen:
        producer.send_item_deletion(item)
    producer.flush()
    inbox.put(([], {}, dict.fromkeys(probed, sent), []))
    return chosen, probed


def run(options: E2EOptions, log: Log) -> dict:
    """Run the benchmark; returns the summary (see ``summarise``). Cleans up whatever it started."""
    folder = Path(tempfile.mkdtemp(prefix="recsim-bench-e2e-"))
    try:
        result = _run_in(options, folder, log)
    except KeyboardInterrupt:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except BaseException:
        log(f"bench e2e: the logs of the failed run are kept in {folder}")
        raise
    if options.keep_logs:
        shutil.rmtree(folder / "kafka" / "data", ignore_errors=True)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        log(f"bench e2e: the logs of the run are in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _run_in(options: E2EOptions, folder: Path, log: Log) -> dict:
    rss = PeakRss()
    rss.watch("bench", os.getpid())
    children = Children(folder)
    ctx = mp.get_context("spawn")  # never fork a process that holds Kafka client threads
    stop, inbox, shared = ctx.Event(), ctx.Queue(), ctx.Array("q", 6)
    worker: mp.process.BaseProcess | None = None
    rss.start()
    api_pin: list[str] = []
    if options.api_cpus:
        api_cpus, others = _split_cpus(options.api_cpus)
        os.sched_setaffinity(0, others)  # this thread, so every process and thread it starts from here
        api_pin = ["taskset", "-c", ",".join(map(str, sorted(api_cpus)))]
    pinned = _pinned(api_cpus, others) if api_pin else nullcontext()
    with broker(options, folder, log) as (bootstrap, broker_pid):
        try:
            if broker_pid is not None:
                rss.watch("broker", broker_pid)
            kafka = KafkaConfig.isolated(bootstrap, "bench")
            ensure_topics(kafka)
            metrics_port, api_port = free_port(), free_port()
            snapshots = str(folder / "snapshots")
            cli = [sys.executable, "-m", "recsim_stream.cli"]
            nice = ["nice", "-n", str(options.training_niceness)] if options.training_niceness else []
            updater = children.start(
                "updater",
                [*nice, *cli, "train", "--kafka-bootstrap", bootstrap, "--kafka-events-topic", kafka.events_topic,
                 "--kafka-items-topic", kafka.items_topic, "--kafka-dlq-topic", kafka.dlq_topic,
                 "--kafka-group-id", kafka.group_id, "--snapshot-dir", snapshots,
                 "--snapshot-interval-s", str(options.snapshot_interval_s),
                 "--checkpoint-dir", str(folder / "checkpoints"),
                 "--metrics-port", str(metrics_port)],
            )  # fmt: skip
            rss.watch("updater", updater.pid)
            api = children.start(
                "api", [*api_pin, *cli, "serve", "--port", str(api_port), "--snapshot-dir", snapshots]
            )
            rss.watch("api", api.pid)
            api_url = f"http://127.0.0.1:{api_port}"
            probe = _Probe(f"http://127.0.0.1:{metrics_port}/metrics", api_url)
            log("bench e2e: waiting for the updater (Ray) and the query API")
            _wait_for("updater", lambda: "train: consuming" in children.log("updater"), children,
                      _READY_TIMEOUT_S)  # fmt: skip
            _wait_for("query API", lambda: _get(probe.client, f"{api_url}/healthz") is not None, children,
                      _READY_TIMEOUT_S)  # fmt: skip
            worker = ctx.Process(
                target=query_worker,
                args=(api_url, inbox, stop, shared, str(folder / "queries.json"), options.qps, options.seed),
                name="bench-queries",
            )
            with pinned:
                worker.start()
            rss.watch("queries", worker.pid)
            if options.training_niceness:
                os.nice(options.training_niceness)  # this thread, and the producer's, created next
            producer = RecordProducer(kafka)
            try:
                exact_below = load_config().index.exact_below  # as the children read it
                produced = _produce(
                    options,
                    producer,
                    inbox,
                    children,
                    lambda phase, out: log(_progress_line(out, probe, shared, phase)),
                    probe.updater,
                    lambda: steady_state(probe.served(), options.items, exact_below),
                    probe.serves,
                )
            finally:
                producer.close()
            drained_at = _drain(produced, probe, children, shared, options, log)
            _wait_fresh(shared, produced, children, options)
            updater_totals, api_text, served = probe.updater(), probe.api_metrics_text(), probe.served()
            api_totals = metric_totals(api_text)
            probe.loads.append(os.getloadavg()[0])
            stop.set()
            worker.join(timeout=30)
            queried = json.loads((folder / "queries.json").read_text())
            queried["served_items"] += _wait_catalogue(probe, children, options)
            children.stop("updater")
            final_line = next(
                (line for line in reversed(children.log("updater").splitlines()) if "train: done" in line), ""
            )
        finally:
            stop.set()
            if worker is not None and worker.is_alive():
                worker.join(timeout=10)
                if worker.is_alive():
                    worker.terminate()
            children.stop_all()
            rss.stop()
    result = summarise(
        produced, drained_at, updater_totals, api_totals, queried, rss.mb_by_root(), options.items
    )
    result["served_at_end"] = served
    result.update(slow_query_shares(api_text, [ms for _t, _e, _s, ms in queried["queries"]]))
    result["load_average_1m"] = {
        "start": probe.loads[0],
        "median": round(percentile(probe.loads, 50), 2),
        "max": max(probe.loads),
    }
    result["updater_final_line"] = final_line
    if options.plot:
        plot(options.plot, queried, produced.started)
        log(f"bench e2e: wrote {options.plot}")
    return result


def _drain(
    produced: _Produced, probe: _Probe, children: Children, shared: mp.Array, options: E2EOptions, log: Log
) -> float:
    """Wait until the updater has trained or dead-lettered every event produced; the wall time it had."""
    deadline = time.monotonic() + options.drain_timeout_s
    report_at = time.monotonic() + _PROGRESS_EVERY_S
    while True:
        totals = probe.updater()
        done = totals.get("recsim_events_trained_total", 0.0) + totals.get(
            "recsim_events_dead_lettered_total", 0.0
        )
        if done >= produced.events:
            return time.time()
        children.check()
        now = time.monotonic()
        if now > deadline:
            raise BenchError(
                f"the updater handled {done:,.0f} of {produced.events:,} events within "
                f"{options.drain_timeout_s:.0f} s of the producer's end"
            )
        if now >= report_at:
            log(_progress_line(produced, probe, shared, "draining"))
            report_at = now + _PROGRESS_EVERY_S
        time.sleep(0.1)


def _wait_fresh(shared: mp.Array, produced: _Produced, children: Children, options: E2EOptions) -> None:
    """Give new items clicked near the end up to ``fresh_grace_s`` to reach the served snapshot, and
    items deleted near the end as long to leave it."""
    deadline = time.monotonic() + options.fresh_grace_s
    while time.monotonic() < deadline:
        pending, fresh, gone = shared[2], shared[3], shared[5]
        if (
            pending == 0
            and fresh >= produced.new_items_clicked
            and gone >= produced.deletions + len(produced.bulk_probed)
        ):
            return
        children.check()
        time.sleep(0.1)


def _wait_catalogue(probe: _Probe, children: Children, options: E2EOptions) -> list[tuple[float, int]]:
    """(wall time, items served) polled until the API serves ``options.items`` items or
    ``catalogue_wait_s`` passed: the time is when the poll saw it (at most a poll late)."""
    seen: list[tuple[float, int]] = []
    deadline = time.monotonic() + options.catalogue_wait_s
    while time.monotonic() < deadline:
        items = probe.served().get("items") or 0
        seen.append((time.time(), items))
        if items >= options.items:
            break
        children.check()
        time.sleep(0.2)
    return seen


def server_timing_ms(header: str | None) -> float | None:
    """The ``app`` duration (ms) of a ``Server-Timing`` header, as the query API sends it; None when absent."""
    for metric in (header or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        if name == "app":
            for param in params:
                key, _, value = param.partition("=")
                if key == "dur":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


def _server_percentiles(server_ms: Sequence[float | None]) -> dict:
    """The API's own time to answer the timed queries (from their Server-Timing headers): the client's
    latency less the transport and the client's own work on a shared core."""
    known = [ms for ms in server_ms if ms is not None]
    return {
        "query_server_p50_ms": _round(percentile(known, 50), 2),
        "query_server_p99_ms": _round(percentile(known, 99), 2),
    }


def summarise(
    produced: _Produced,
    drained_at: float,
    updater: dict[str, float],
    api: dict[str, float],
    queried: dict,
    peak_rss_mb: dict[str, float],
    catalogue_size: int,
) -> dict:
    """The JSON summary: counts, rates over [first event produced, updater drained], percentiles."""
    window = max(drained_at - produced.started, 1e-9)
    freshness = [served - produced_at for _item, produced_at, served in queried["fresh"]]
    bulk = produced.bulk_probed
    deletion = [gone - sent for item, sent, gone in queried["gone"] if item not in bulk]
    bulk_deletion = [gone - sent for item, sent, gone in queried["gone"] if item in bulk]
    latencies = [ms for _t, _endpoint, _status, ms in queried["queries"]]
    times = [t for t, _endpoint, _status, _ms in queried["queries"]]
    failed = sum(1 for _t, _endpoint, status, _ms in queried["queries"] if status != 200)
    trained = int(updater.get("recsim_events_trained_total", 0))
    return {
        "events_produced": produced.events,
        "item_records_produced": produced.items,
        "events_trained": trained,
        "dead_lettered": int(updater.get("recsim_events_dead_lettered_total", 0)),
        "produce_events_per_s": round(produced.events / max(produced.ended - produced.started, 1e-9), 1),
        "ingest_events_per_s": round(trained / window, 1),
        "train_pairs_per_s": round(updater.get("recsim_pairs_trained_total", 0.0) / window, 1),
        "drain_after_produce_s": round(drained_at - produced.ended, 2),
        "snapshot_pauses": snapshot_pauses(updater),
        **_full_speed_rates(produced, drained_at, updater),
        "new_items_clicked": produced.new_items_clicked,
        "freshness_measured": len(freshness),
        "freshness_unresolved": len(queried["unresolved"]),
        "freshness_p50_s": _round(percentile(freshness, 50), 3),
        "freshness_p95_s": _round(percentile(freshness, 95), 3),
        "deletions": produced.deletions,
        "deletions_measured": len(deletion),
        "deletions_unresolved": len(queried["deletions_unresolved"]),
        "deletion_p50_s": _round(percentile(deletion, 50), 3),
        "deletion_p95_s": _round(percentile(deletion, 95), 3),
        "bulk_deletions": produced.bulk_deletions,
        "bulk_deletions_measured": len(bulk_deletion),
        "bulk_deletion_p50_s": _round(percentile(bulk_deletion, 50), 3),
        "bulk_deletion_max_s": _round(max(bulk_deletion, default=None), 3),
        "queries": len(latencies),
        "failed_queries": failed,
        "queries_per_s": round(len(times) / max(times[-1] - times[0], 1e-9), 1) if len(times) > 1 else 0.0,
        "query_p50_ms": _round(percentile(latencies, 50), 2),
        "query_p99_ms": _round(percentile(latencies, 99), 2),
        **_server_percentiles(queried["server_ms"]),
        "snapshots_published": int(updater.get("recsim_snapshots_published_total", 0)),
        "shard_rows": int(updater.get("recsim_shard_rows", 0)),  # all shards, at the last progress report
        "rows_expired": int(updater.get("recsim_rows_expired_total", 0)),  # learn.expire_after_s
        **catalogue_served(produced, catalogue_size, queried["served_items"]),
        "catalogue_first_waited_s": _round(produced.catalogue_first_waited_s, 2),
        **written_to_served(queried["snapshots"]),
        "swaps": int(api.get("recsim_index_swaps_total", 0)),
        "snapshot_loads_refused": int(api.get("recsim_snapshot_loads_refused_total", 0)),
        "items": int(api.get("recsim_index_items", 0)),
        "peak_rss_mb": round(sum(peak_rss_mb.values()), 1),
        "peak_rss_mb_by_process": peak_rss_mb,
    }


STEADY_FULL_SHARE = 0.9  # of the catalogue served from the full snapshot's rows, not its delta


def steady_state(served: dict, catalogue: int, exact_below: int) -> bool:
    """Whether the API (its ``/snapshot`` answer, ``served``) serves the whole ``catalogue`` as a
    deployment long past its listing would: mostly (``STEADY_FULL_SHARE``) from a full snapshot, with
    approximate indexes once the catalogue is past ``exact_below``. The first full snapshot of a large
    listing is served with exact ones until its approximate build is published (minutes at 1M items),
    and meanwhile every query scans the million rows."""
    items = served.get("items") or 0
    from_full = items - (served.get("delta_rows") or 0)
    approximate = catalogue < exact_below or served.get("index_kind") not in (None, "flat")
    return items >= catalogue and from_full >= STEADY_FULL_SHARE * catalogue and approximate


def catalogue_served(produced: _Produced, size: int, served_items: list[tuple[float, int]]) -> dict:
    """Seconds from the first item of the initial catalogue produced to its last one produced
    (``catalogue_listed_s``) and to the first state the API served with at least ``size`` items
    (``catalogue_served_s``, None if none did): how long a bulk listing takes to become
    recommendable. ``served_items``: (loaded by the API, items) of each served version."""
    in_order = sorted(served_items, key=lambda pair: pair[0])  # lists from JSON, tuples appended
    served = next((loaded for loaded, items in in_order if items >= size), None)
    return {
        "catalogue_listed_s": _round(produced.catalogue_listed - produced.listing_started, 2),
        "catalogue_served_s": None if served is None else _round(served - produced.listing_started, 2),
    }


QUERY_ENDPOINTS = ("/recommend", "/items/{item_id:path}/similar")  # the query process's, as routed


def slow_query_shares(api_metrics: str, client_ms: Sequence[float]) -> dict:
    """Share of queries over 10 and 50 ms as the client saw them and as the API's own histogram
    (``recsim_query_duration_seconds``, from routing to the response) saw them. A tail the client
    sees and the server does not was spent before the request reached the app: waiting for the
    API process to be scheduled, in the socket, in the HTTP parser."""
    below = {0.01: 0.0, 0.05: 0.0}
    total = 0.0
    for family in text_string_to_metric_families(api_metrics):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name != "recsim_query_duration_seconds_bucket"
                or labels.get("endpoint") not in QUERY_ENDPOINTS
            ):
                continue
            edge = float(labels["le"])
            if edge in below:
                below[edge] += sample.value
            elif math.isinf(edge):
                total += sample.value
    out = {}
    for edge, name in ((0.01, "10ms"), (0.05, "50ms")):
        client = sum(1 for ms in client_ms if ms > edge * 1000) / len(client_ms) if client_ms else None
        out[f"query_share_over_{name}"] = _round(client, 4)
        out[f"server_query_share_over_{name}"] = _round(1 - below[edge] / total, 4) if total else None
    return out


def written_to_served(snapshots: list[tuple[float, float]]) -> dict:
    """From a snapshot's write (manifest ``created_at``) to the API serving it, over the versions the
    query process saw served: the serving side's share of freshness."""
    delays = [loaded - written for written, loaded in snapshots]
    return {
        "written_to_served_p50_s": _round(percentile(delays, 50), 3),
        "written_to_served_p95_s": _round(percentile(delays, 95), 3),
    }


def _full_speed_rates(produced: _Produced, drained_at: float, updater: dict[str, float]) -> dict:
    """Rates over [end of the paced phase, drained]: the updater's capacity when the input is not paced."""
    if produced.at_paced_end is None:
        return {}
    window = max(drained_at - produced.paced_end, 1e-9)
    before = produced.at_paced_end
    return {
        "full_speed_ingest_events_per_s": round(
            (updater.get("recsim_events_trained_total", 0.0) - before.get("recsim_events_trained_total", 0.0))
            / window,
            1,
        ),
        "full_speed_train_pairs_per_s": round(
            (updater.get("recsim_pairs_trained_total", 0.0) - before.get("recsim_pairs_trained_total", 0.0))
            / window,
            1,
        ),
    }


def plot(path: str, queried: dict, started: float) -> None:
    """Two panels over wall time since the first event: each new item's freshness, query latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    fresh = queried["fresh"]
    top.scatter([p - started for _i, p, _s in fresh], [s - p for _i, p, s in fresh], s=12, label="new item")
    gone = queried["gone"]
    if gone:
        top.scatter(
            [d - started for _i, d, _g in gone], [g - d for _i, d, g in gone], s=24, marker="v",
            color="tab:red", label="deleted item",
        )  # fmt: skip
    top.set_ylabel("seconds\nproduced -> served (or gone)")
    top.set_title("new items: first click to served with it; deleted items: tombstone to 404")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    for endpoint, colour in (("recommend", "tab:blue"), ("similar", "tab:orange")):
        points = [(t - started, ms) for t, e, _status, ms in queried["queries"] if e == endpoint]
        if points:
            bottom.scatter(*zip(*points, strict=True), s=4, alpha=0.5, color=colour, label=endpoint)
    failed = [(t - started, ms) for t, _e, status, ms in queried["queries"] if status != 200]
    if failed:
        bottom.scatter(*zip(*failed, strict=True), s=20, marker="x", color="red", label="failed")
    bottom.set_yscale("log")
    bottom.set_ylabel("query latency (ms)")
    bottom.set_xlabel("seconds since the first event")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
