"""Query latency through a real `recsim-stream serve` while a kept snapshot chain is replayed at its pace.

    .venv/bin/recsim-stream bench e2e --json --items 1000000 --duration 60 --catalogue-wait-s 180 --keep-logs
    RECSIM_INDEX_API_BUILD_IDLE=1 .venv/bin/python scripts/replay_http.py /tmp/recsim-bench-e2e-XXXX/snapshots

The HTTP counterpart of ``replay_queries.py``: the chain's versions are made the newest one by one,
each when its manifest's ``created_at`` comes round again, and a `serve` process pinned to ``--cpu``
loads them; this process, on the same core as in ``bench e2e --api-cpus``, fires the bench's query mix
(``--qps`` a second: half ``POST /recommend`` with three served items and a recent one, half
``GET /items/{id}/similar``) while a prober asks ``GET /items/{id}`` of five recent items and
``/snapshot`` four times a second. No broker, no training: what the end-to-end run adds on top of
this (the other core busy with training, sharing the memory bus) is what is left to explain. Prints
p50/p99 per 10 s window and overall. The chain's ``LATEST`` pointer is restored afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from replay_chain import Chain, percentile

from recsim_stream.local_broker import free_port

# Copies between two 200 MB arrays until killed: the memory traffic of a training core, without its CPU
# work, to show how much of the end-to-end tail is the cache and memory the two cores share.
_STREAM = "import numpy as np\na = np.ones(50_000_000, np.float32)\nb = np.empty_like(a)\nwhile True: np.copyto(b, a)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("snapshots", type=Path, help="a kept chain: bench e2e --keep-logs, its snapshots/")
    parser.add_argument("--qps", type=float, default=50.0)
    parser.add_argument("--cpu", type=int, default=1, help="the core of the API and of this client")
    parser.add_argument(
        "--stream-cpu",
        type=int,
        default=None,
        help="meanwhile stream 400 MB copies on this core (memory bus load)",
    )
    args = parser.parse_args()
    chain, port = Chain(args.snapshots), free_port()
    chain.point(chain.versions[0])
    api = subprocess.Popen(
        ["taskset", "-c", str(args.cpu), sys.executable, "-m", "recsim_stream.cli", "serve",
         "--snapshot-dir", str(chain.folder), "--port", str(port), "--metrics-port", "0"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    load = None
    if args.stream_cpu is not None:
        load = subprocess.Popen(["taskset", "-c", str(args.stream_cpu), sys.executable, "-c", _STREAM])
    os.sched_setaffinity(0, {args.cpu})
    try:
        queries = _replay(chain, f"http://127.0.0.1:{port}", args.qps)
    finally:
        for process in (api, load):
            if process is not None:
                process.terminate()
                process.wait()
        chain.restore()
    print("window_s  recommend_p50_ms  recommend_p99_ms  similar_p50_ms  similar_p99_ms")
    for window in range(0, int(queries[-1][0]) + 1, 10):
        of = {
            e: [ms for t, e_, _, ms in queries if e_ == e and window <= t < window + 10] for e in ("r", "s")
        }
        print(f"{window:8d}  {percentile(of['r'], 50):16.1f}  {percentile(of['r'], 99):16.1f}  "
              f"{percentile(of['s'], 50):14.1f}  {percentile(of['s'], 99):14.1f}")  # fmt: skip
    latencies = [ms for *_, ms in queries]
    failed = sum(1 for _, _, status, _ in queries if status != 200)
    print(f"queries {len(queries)}, failed {failed}: p50 {percentile(latencies, 50):.2f} ms, "
          f"p99 {percentile(latencies, 99):.2f} ms, over 10 ms {np.mean(np.array(latencies) > 10):.2%}")  # fmt: skip


def _replay(chain: Chain, url: str, qps: float) -> list[tuple[float, str, int, float]]:
    """Advance the chain at its pace while querying; (seconds since the start, endpoint, status, ms)."""
    client = httpx.Client(base_url=url)
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    served = chain.ids(chain.versions[0])[:1000]
    recent = list(served)
    lock, stop = threading.Lock(), threading.Event()

    def advance() -> None:
        began = time.perf_counter()
        for version in chain.versions[1:]:
            time.sleep(max(0.0, began + chain.since_first(version) - time.perf_counter()))
            chain.point(version)
            newest = chain.ids(version)[-200:]
            with lock:
                recent[:] = newest or recent
        time.sleep(5.0)
        stop.set()

    def probe() -> None:
        with httpx.Client(base_url=url) as prober:
            while not stop.is_set():
                with lock:
                    items = random.sample(recent, min(5, len(recent)))
                for item in items:
                    prober.get(f"/items/{item}")
                prober.get("/snapshot")
                stop.wait(0.25)

    for target in (advance, probe):
        threading.Thread(target=target, daemon=True).start()
    rng, queries = random.Random(0), []
    began = next_query = time.perf_counter()
    while not stop.is_set():
        with lock:
            subjects, latest = [rng.choice(served) for _ in range(3)], recent[-1:]
        started = time.perf_counter()
        if rng.random() < 0.5:
            endpoint, response = "r", client.post("/recommend", json={"items": subjects + latest, "k": 20})
        else:
            endpoint, response = "s", client.get(f"/items/{subjects[0]}/similar?k=20")
        queries.append(
            (started - began, endpoint, response.status_code, 1e3 * (time.perf_counter() - started))
        )
        if response.status_code == 200 and len(served) < 50_000:
            with lock:
                served.extend(r["item_id"] for r in response.json()["results"])
        next_query += 1.0 / qps
        time.sleep(max(0.0, next_query - time.perf_counter()))
    return queries


if __name__ == "__main__":
    main()
