"""Client CPU and wall time per request to a running query API: httpx against the standard
library's keep-alive client that ``bench e2e``'s query process uses (``bench_e2e._Connection``).

    make run    # or any recsim-stream serve; then, in another shell:
    .venv/bin/python scripts/http_client_cost.py http://127.0.0.1:8000 --item i0 [--requests 2000]

In ``bench e2e --api-cpus`` runs the query process shares the API's core, so its CPU per request is
time taken from the API.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import httpx

from recsim_stream.bench_e2e import _Connection


def timed(requests: int, call: Callable[[], object]) -> tuple[float, float]:
    for _ in range(100):
        call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        call()
    return (time.perf_counter() - wall) / requests * 1e3, (time.process_time() - cpu) / requests * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("api")
    parser.add_argument("--item", default="i0")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    body = {"items": [args.item], "k": 20}
    similar = f"/items/{args.item}/similar?k=20"
    client, connection = httpx.Client(base_url=args.api), _Connection(args.api)
    cases = {
        "httpx GET": lambda: client.get(similar).json(),
        "httpx POST": lambda: client.post("/recommend", json=body).json(),
        "http.client GET": lambda: connection.request("GET", similar).json(),
        "http.client POST": lambda: connection.request("POST", "/recommend", body).json(),
    }
    print("client             wall ms  CPU ms")
    for name, call in cases.items():
        wall, cpu = timed(args.requests, call)
        print(f"{name:18s} {wall:7.3f} {cpu:7.3f}")


if __name__ == "__main__":
    main()
