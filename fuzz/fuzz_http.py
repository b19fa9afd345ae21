"""Fuzz the query API in process: raw HTTP/1.1 requests straight into the ASGI app (FastAPI, the
body-size middleware, the routes) over a real snapshot and real FAISS indexes.

Each input is one request as a client would send it (``METHOD target HTTP/1.1``, header lines, a
blank line, the body); the harness does what uvicorn does with it (split the target, percent-decode
the path, hand the body over in chunks) and calls the app. Invariant: the app answers exactly once,
never with a 5xx, and every 4xx carries a JSON ``detail``; no exception escapes the app.

    .venv/bin/python fuzz/fuzz_http.py var/fuzz/http/corpus fuzz/seeds/http -max_total_time=60
"""

import asyncio
import json
import re
import sys
import tempfile
from urllib.parse import unquote

import atheris
import numpy as np

# FastAPI and Starlette too: most of the request handling the fuzzer should see is theirs.
with atheris.instrument_imports(include=["recsim_stream", "fastapi", "starlette"]):
    from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
    from recsim_stream.http_api import create_app
    from recsim_stream.metrics import ApiMetrics, new_registry
    from recsim_stream.query import IndexHolder, SnapshotWatcher
    from recsim_stream.snapshot import SnapshotArrays, SnapshotStore

API = ApiConfig(max_k=50, max_body_bytes=2048, max_request_items=10)
IDS = ["a", "b", "ü/é 😀", "x/similar", "%41", "?"] + [f"item-{j}" for j in range(40)]
_TARGET = re.compile(rb"^[\x21-\x7e]+$")  # what h11 lets through as a request target
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # header names and methods


def _app():
    rng = np.random.default_rng(0)
    n = len(IDS)
    arrays = SnapshotArrays(
        ids=np.array(IDS, dtype="U"),
        input_vectors=rng.normal(size=(n, 8)).astype(np.float32),
        output_vectors=rng.normal(size=(n, 8)).astype(np.float32),
        counts=np.arange(n, dtype=np.int64),
        cold=np.array([j % 5 == 0 for j in range(n)], dtype=bool),
        content_vectors=rng.normal(size=(n, 4)).astype(np.float32),
    )
    store = SnapshotStore(SnapshotConfig(dir=tempfile.mkdtemp(prefix="recsim-fuzz-http-")))
    store.write(3, arrays, offsets={"events": {0: 1}}, newest_event_ts=1.0, scoring={"new_item_share": 0.1})
    registry = new_registry()
    holder = IndexHolder(API, ApiMetrics(registry))
    assert SnapshotWatcher(store, holder, IndexConfig(recall_sample=10), poll_s=1.0).poll_once()
    return create_app(holder, API, registry)


def parse(data: bytes) -> tuple[dict, list[bytes]] | None:
    """The ASGI scope and body chunks of a raw request, or None where a server would answer 400 itself."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]):
        return None
    method, target, _ = parts
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name) or any(c in value for c in b"\r\n\x00"):
            return None
        headers.append((name.lower(), value.strip()))
    raw_path, _, query = target.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method.decode("ascii"),
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    chunks = [body[i : i + 700] for i in range(0, len(body), 700)] or [b""]
    return scope, chunks


async def call(app, scope: dict, chunks: list[bytes]) -> list[dict]:
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent = []

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


APP = _app()
LOOP = asyncio.new_event_loop()


def test_one_input(data: bytes) -> None:
    request = parse(data)
    if request is None:
        return
    sent = LOOP.run_until_complete(call(APP, *request))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    status = starts[0]["status"]
    assert status < 500, (status, sent)
    if status >= 400:
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert json.loads(body)["detail"], body


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
