"""Hostile requests to the query API: whatever a client sends gets a 2xx or a 4xx with a reason, never a
500. The real FastAPI app over a real snapshot on disk and real FAISS indexes (exact: the catalogue is
small), with cold rows and a new-item share so that every scoring path runs."""

import json
import math
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from recsim_stream.config import ApiConfig, IndexConfig, SnapshotConfig
from recsim_stream.http_api import create_app
from recsim_stream.metrics import ApiMetrics, new_registry
from recsim_stream.query import IndexHolder, SnapshotWatcher
from recsim_stream.snapshot import SnapshotArrays, SnapshotStore

API = ApiConfig(max_k=50, max_body_bytes=2048, max_request_items=10)
IDS = ["a", "b", "ü/é 😀", "x/similar", "%41", "?", "日本語"] + [f"item-{j}" for j in range(33)]
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Anything JSON can hold, including what Python's json emits and reads beyond the standard (NaN,
# Infinity) and strings with lone surrogates (valid JSON escapes, not valid text).
texts = st.text(max_size=20) | st.sampled_from(["\ud83d", "a\x00", "", "x" * 600] + IDS)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | texts,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = len(IDS)
    store = SnapshotStore(SnapshotConfig(dir=str(tmp_path_factory.mktemp("hostile-api"))))
    arrays = SnapshotArrays(
        ids=np.array(IDS, dtype="U"),
        input_vectors=rng.normal(size=(n, 8)).astype(np.float32),
        output_vectors=rng.normal(size=(n, 8)).astype(np.float32),
        counts=np.arange(n, dtype=np.int64),
        cold=np.array([j % 5 == 0 for j in range(n)]),
        content_vectors=rng.normal(size=(n, 4)).astype(np.float32),
    )
    store.write(3, arrays, offsets={"events": {0: 1}}, newest_event_ts=1.0, scoring={"new_item_share": 0.1})
    registry = new_registry()
    holder = IndexHolder(API, ApiMetrics(registry))
    assert SnapshotWatcher(store, holder, IndexConfig(), poll_s=1.0).poll_once()
    return TestClient(create_app(holder, API, registry))


def _post(client, body: bytes):
    return client.post("/recommend", content=body, headers={"content-type": "application/json"})


def _is_id(value) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 512 and "\ud83d" not in value


def _is_id_list(value, min_size: int) -> bool:
    return (
        isinstance(value, list)
        and min_size <= len(value) <= API.max_request_items
        and all(map(_is_id, value))
    )


def _assert_refused_with_reason(response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["detail"]


@HYPOTHESIS
@given(json_values)
def test_any_json_body_gets_an_answer_or_a_4xx_with_a_reason(client, value):
    response = _post(client, json.dumps(value).encode())
    assert response.status_code in (200, 404, 413, 422), response.text
    if response.status_code != 200:
        assert response.json()["detail"]


@HYPOTHESIS
@given(st.binary(max_size=300))
def test_any_bytes_as_a_body_get_a_4xx_with_a_reason(client, body):
    response = _post(client, body)
    assert response.status_code in (200, 400, 404, 422), response.text
    if response.status_code != 200:
        assert response.json()["detail"]


@HYPOTHESIS
@given(
    items=st.lists(texts, max_size=12) | json_values,
    k=st.integers(-5, 60) | st.integers() | st.floats() | st.booleans() | st.none() | st.text(max_size=3),
    exclude=st.lists(texts, max_size=12) | json_values,
)
def test_recommend_answers_exactly_the_well_typed_requests(client, items, k, exclude):
    body = json.dumps({"items": items, "k": k, "exclude": exclude}).encode()
    assume(len(body) <= API.max_body_bytes)
    response = _post(client, body)
    well_typed = _is_id_list(items, 1) and type(k) is int and 1 <= k <= API.max_k and _is_id_list(exclude, 0)
    if not well_typed:
        _assert_refused_with_reason(response, 422)
    elif not set(items) & set(IDS):
        _assert_refused_with_reason(response, 404)
    else:
        assert response.status_code == 200, response.text
        answer = response.json()
        found = [r["item_id"] for r in answer["results"]]
        assert len(found) == min(k, len(IDS) - len(set(items + exclude) & set(IDS)))
        assert set(found) <= set(IDS) - set(items) - set(exclude)
        assert answer["unknown_items"] == [i for i in items if i not in IDS]
        assert all(math.isfinite(r["score"]) for r in answer["results"])


@HYPOTHESIS
@given(st.integers(1, 1100))
def test_deeply_nested_bodies_get_a_4xx_with_a_reason(client, depth):
    response = _post(client, b'{"items": ' + b"[" * depth + b"]" * depth + b"}")
    assert response.status_code in (400, 413, 422), response.text
    assert response.json()["detail"]


@settings(max_examples=15, deadline=None)
@given(st.integers(API.max_body_bytes + 1, 200_000), st.booleans())
def test_bodies_over_the_limit_get_413_declared_or_streamed(client, size, streamed):
    body = b'{"items": ["a"], "pad": "' + b"x" * size + b'"}'
    content = (body[i : i + 4096] for i in range(0, len(body), 4096)) if streamed else body
    response = client.post("/recommend", content=content, headers={"content-type": "application/json"})
    _assert_refused_with_reason(response, 413)


@HYPOTHESIS
@given(st.text(max_size=600) | st.sampled_from(IDS))
def test_item_paths_answer_known_ids_and_refuse_the_rest(client, item_id):
    # Starlette's TestClient percent-decodes the path a second time (httpx already did), which uvicorn
    # does not: ids with "%" go through fuzz/fuzz_http.py, which decodes once as uvicorn does.
    assume(item_id not in (".", "..") and "%" not in item_id and not item_id.endswith("/similar"))
    response = client.get("/items/" + quote(item_id, safe=""))
    if item_id in IDS:
        assert response.status_code == 200
        assert response.json()["item_id"] == item_id
    else:
        _assert_refused_with_reason(response, 404 if 1 <= len(item_id) <= 512 else 422)


@HYPOTHESIS
@given(st.sampled_from(IDS), st.text(max_size=12) | st.integers().map(str))
def test_similar_with_any_k_answers_or_refuses_with_422(client, item_id, k):
    assume("%" not in item_id)  # see test_item_paths_answer_known_ids_and_refuse_the_rest
    response = client.get("/items/" + quote(item_id, safe="") + "/similar", params={"k": k})
    if response.status_code == 200:
        results = response.json()["results"]
        assert 1 <= len(results) <= API.max_k
        assert item_id not in [r["item_id"] for r in results]
    else:
        _assert_refused_with_reason(response, 422)


@HYPOTHESIS
@given(st.lists(texts, max_size=10))
def test_junk_in_exclude_never_leaks_excluded_items(client, exclude):
    assume(all(map(_is_id, exclude)))
    response = _post(client, json.dumps({"items": ["a"], "k": 50, "exclude": exclude}).encode())
    assert response.status_code == 200, response.text
    found = {r["item_id"] for r in response.json()["results"]}
    assert not found & (set(exclude) | {"a"})
