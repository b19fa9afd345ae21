"""The query API's contract (every bad input is a 4xx, never a 500) and hot swaps under load."""

import json
import threading

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
from recsim_stream.http_api import EVENT_LOOP, HTTP_PARSER, create_app
from recsim_stream.index import build_main_indexes, ship
from recsim_stream.metrics import ApiMetrics, new_registry
from recsim_stream.query import IndexHolder, SnapshotWatcher
from recsim_stream.snapshot import SnapshotArrays, SnapshotStore

API = ApiConfig(max_k=50, max_body_bytes=2048, max_request_items=10)
INDEX = IndexConfig(exact_below=100, hnsw_ef_search=64, recall_sample=50)
IDS = ["a", "b", "c", "ü/é 😀"] + [f"item-{j}" for j in range(196)]


def _arrays(ids, seed=0):
    rng = np.random.default_rng(seed)
    n = len(ids)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    return SnapshotArrays(
        ids=np.array(ids, dtype="U"),
        input_vectors=vectors,
        output_vectors=rng.normal(size=(n, 8)).astype(np.float32),
        counts=np.arange(n, dtype=np.int64),
        cold=np.zeros(n, dtype=bool),
    )


def _service(tmp_path):
    registry = new_registry()
    holder = IndexHolder(API, ApiMetrics(registry))
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "snaps"), keep=3))
    watcher = SnapshotWatcher(store, holder, INDEX, poll_s=0.01)
    return store, holder, watcher, create_app(holder, API, registry)


@pytest.fixture
def empty_client(tmp_path):
    _, _, _, app = _service(tmp_path)
    return TestClient(app)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store, _, watcher, app = _service(tmp_path_factory.mktemp("api"))
    store.write(7, _arrays(IDS), offsets={"events": {0: 42}}, newest_event_ts=123.0)
    assert watcher.poll_once()
    return TestClient(app)


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/items/a/similar", None),
        ("POST", "/recommend", {"items": ["a"]}),
        ("GET", "/items/a", None),
        ("GET", "/snapshot", None),
        ("GET", "/healthz", None),
    ],
)
def test_every_query_is_503_before_the_first_snapshot(empty_client, method, path, body):
    response = empty_client.request(method, path, json=body)
    assert response.status_code == 503
    assert "no snapshot loaded yet" in response.json()["detail"]


def test_similar_returns_k_other_items(client):
    response = client.get("/items/a/similar", params={"k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 7
    assert len(body["results"]) == 5
    assert "a" not in [r["item_id"] for r in body["results"]]


def test_unicode_item_ids_work_in_paths(client):
    assert client.get("/items/ü/é 😀").json()["item_id"] == "ü/é 😀"


def test_an_id_with_a_trailing_newline_is_not_taken_for_the_id_without_it(client):
    # Starlette's "path" convertor and the route's "$" once answered /items/a%0A as item "a".
    for path in ("/items/a%0A", "/items/a%0A/similar", "/items/%0A"):
        response = client.get(path)
        assert (response.status_code, "unknown item id" in response.json()["detail"]) == (404, True), path


def test_ids_with_a_slash_work_for_similar(client):
    assert client.get("/items/ü%2Fé 😀/similar", params={"k": 3}).json()["item_id"] == "ü/é 😀"


def test_recommend_returns_k_items(client):
    response = client.post("/recommend", json={"items": ["a", "ü/é 😀", "nope"], "k": 4, "exclude": ["b"]})
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == 4
    assert body["unknown_items"] == ["nope"]
    assert {"a", "b", "ü/é 😀"}.isdisjoint(r["item_id"] for r in body["results"])


def test_item_returns_vector_count_and_cold_flag(client):
    body = client.get("/items/b").json()
    assert (len(body["vector"]), body["interactions"], body["cold"]) == (8, 1, False)


def test_snapshot_describes_what_is_served(client):
    body = client.get("/snapshot").json()
    assert (body["version"], body["items"], body["dim"], body["newest_event_ts"]) == (7, 200, 8, 123.0)
    assert body["offsets"] == {"events": {"0": 42}}
    assert body["index_kind"] == "hnsw"


def test_healthz_is_ok_with_a_snapshot(client):
    assert client.get("/healthz").json() == {"status": "ok", "version": 7}


def test_metrics_expose_query_latency(client):
    client.get("/items/a/similar")
    text = client.get("/metrics").text
    assert 'recsim_query_duration_seconds_count{endpoint="/items/{item_id}/similar",status="200"}' in text
    assert "recsim_serving_version 7.0" in text


def test_openapi_lists_every_endpoint(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/items/{item_id}/similar",
        "/recommend",
        "/items/{item_id}",
        "/snapshot",
        "/healthz",
        "/metrics",
    } <= set(paths)


@pytest.mark.parametrize(
    "method,path,kwargs,status",
    [
        ("GET", "/items/nope/similar", {}, 404),
        ("GET", "/items/nope", {}, 404),
        ("GET", "/items/a/similar?k=0", {}, 422),
        ("GET", "/items/a/similar?k=51", {}, 422),
        ("GET", "/items/a/similar?k=-3", {}, 422),
        ("GET", "/items/a/similar?k=abc", {}, 422),
        ("GET", "/items/a/similar?k=1e400", {}, 422),
        ("GET", "/items/" + "x" * 600 + "/similar", {}, 422),
        ("POST", "/recommend", {"json": {"items": ["nope"]}}, 404),
        ("POST", "/recommend", {"json": {"items": []}}, 422),
        ("POST", "/recommend", {"json": {"items": "a"}}, 422),
        ("POST", "/recommend", {"json": {"items": [1, 2]}}, 422),
        ("POST", "/recommend", {"json": {"items": [None]}}, 422),
        ("POST", "/recommend", {"json": {"items": [""]}}, 422),
        ("POST", "/recommend", {"json": {"items": ["a"], "k": "5"}}, 422),
        ("POST", "/recommend", {"json": {"items": ["a"], "k": 2.5}}, 422),
        ("POST", "/recommend", {"json": {"items": ["a"], "k": 0}}, 422),
        ("POST", "/recommend", {"json": {"items": ["a"], "k": 51}}, 422),
        ("POST", "/recommend", {"json": {"items": ["a"], "k": 10**30}}, 422),
        ("POST", "/recommend", {"json": {"items": ["a"], "exclude": "b"}}, 422),
        ("POST", "/recommend", {"json": {"items": ["a"], "surprise": 1}}, 422),
        ("POST", "/recommend", {"json": {"items": ["a"] * 11}}, 422),
        ("POST", "/recommend", {"json": ["a"]}, 422),
        ("POST", "/recommend", {"json": None}, 422),
        (
            "POST",
            "/recommend",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
        ),
        (
            "POST",
            "/recommend",
            {"content": b"\xff\xfe\x00", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("POST", "/recommend", {"content": b"items=a", "headers": {"content-type": "text/plain"}}, 422),
        ("POST", "/recommend", {"content": json.dumps({"items": ["a" * 3000]}).encode()}, 413),
        ("POST", "/recommend", {"content": b"{}", "headers": {"content-length": "not-a-number"}}, 413),
        ("GET", "/items/a/similar", {"params": {"k": "20"}, "headers": {"content-length": "999999"}}, 413),
    ],
)
def test_bad_input_gets_a_4xx_with_a_reason(client, method, path, kwargs, status):
    response = client.request(method, path, **kwargs)
    assert response.status_code == status
    assert response.json()["detail"]


def test_a_streamed_oversized_body_gets_413(client):
    def chunks():
        for _ in range(10):
            yield b"x" * 512

    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_hot_swaps_under_load_never_fail_and_versions_only_grow(tmp_path):
    store, holder, watcher, app = _service(tmp_path)
    store.write(1, _arrays(IDS), offsets={}, newest_event_ts=None)
    assert watcher.poll_once()
    swapped = threading.Condition()
    real_swap = holder.swap

    def swap_and_signal(state):
        done = real_swap(state)
        with swapped:
            swapped.notify_all()
        return done

    holder.swap = swap_and_signal
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    server_thread = threading.Thread(target=server.run, daemon=True)
    server_thread.start()
    watcher.start()
    stop = threading.Event()
    failures, seen = [], {}
    try:
        with swapped:
            assert swapped.wait_for(lambda: server.started, timeout=20)
        port = server.servers[0].sockets[0].getsockname()[1]

        def hammer(name):
            versions = seen.setdefault(name, [])
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                for n in range(5000):
                    if stop.is_set():
                        return
                    if n % 2:
                        response = http.get("/items/a/similar", params={"k": 10})
                    else:
                        response = http.post("/recommend", json={"items": ["b", "c"], "k": 10})
                    if response.status_code != 200 or len(response.json()["results"]) != 10:
                        failures.append((response.status_code, response.text[:200]))
                    else:
                        versions.append(response.json()["version"])

        clients = [threading.Thread(target=hammer, args=(f"client-{j}",)) for j in range(3)]
        for thread in clients:
            thread.start()
        # Every 10th snapshot is full: every 20th ships its approximate indexes (as the snapshotter
        # writes them), the others leave the API to build them (older snapshots). The rest are deltas.
        for version in range(2, 62):
            if version % 10 == 0:
                arrays = _arrays(IDS, seed=version)
                shipped = None
                if version % 20 == 0:
                    shipped = ship(
                        build_main_indexes(arrays.input_vectors, arrays.output_vectors, arrays.counts, INDEX)
                    )
                store.write(version, arrays, offsets={}, newest_event_ts=None, index=shipped)
            else:
                rows = [IDS[(version * 7 + j) % len(IDS)] for j in range(20)] + [f"new-{version}"]
                store.write(
                    version,
                    _arrays(rows, seed=version),
                    offsets={},
                    newest_event_ts=None,
                    parent_version=version - 1,
                )
            watcher.notify()
            with swapped:
                assert swapped.wait_for(lambda v=version: holder.state.version == v, timeout=20)
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    finally:
        stop.set()
        watcher.stop()
        server.should_exit = True
        server_thread.join(timeout=10)
    assert failures == []
    assert holder.state.version == 61
    assert holder.metrics.swaps._value.get() == 61
    assert all(len(v) > 0 for v in seen.values())
    assert all(v == sorted(v) for v in seen.values())


def test_the_service_runs_on_uvicorns_c_parser_and_libuv_loop(client):
    config = uvicorn.Config(client.app, http=HTTP_PARSER, loop=EVENT_LOOP)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
    loop = config.get_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_every_routed_answer_says_how_long_the_api_took(client):
    for response in (client.get("/items/a/similar"), client.get("/items/nope"), client.get("/healthz")):
        name, duration = response.headers["server-timing"].split(";dur=")
        assert name == "app" and 0.0 <= float(duration) < 5000.0
