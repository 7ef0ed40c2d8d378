"""The serving bento end to end, over real HTTP.

One session-scoped setup (about a minute and a half on 2 cores): the smoke pipeline into a
temporary MLflow store, `pipelines/bento.py` into a temporary BENTOML_HOME, then two real
`bentoml serve` processes of the built bento on free loopback ports, one open and one with an
API key. No mocks: answers are checked against the registered model loaded in this process.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

# fixtures: conftest.py
from tests.integration.conftest import (
    API_KEY,
    NAME,
    TEXTS,
    Served,
    champion_scores,
    isolated_env,
    serving_source,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="session")
def reference(served: Served) -> dict[str, dict[str, float]]:
    """Every label's score for TEXTS from the registered champion, loaded in this process."""
    return dict(zip(TEXTS, champion_scores(served.tracking_uri, TEXTS), strict=True))


def _classify(client: httpx.Client, texts: list[str], **extra: object) -> httpx.Response:
    return client.post("/classify", json={"texts": texts, **extra})


def _assert_matches(predictions: list[dict], texts: list[str],
                    reference: dict[str, dict[str, float]]) -> None:
    for text, prediction in zip(texts, predictions, strict=True):
        expected = reference[text]
        best = max(expected, key=expected.get)
        assert prediction["label"] == best, text
        assert prediction["score"] == pytest.approx(expected[best], abs=1e-4), text


def _metric(client: httpx.Client, name: str) -> dict[str, float]:
    """`{labels: value}` for one metric from /metrics."""
    text = client.get("/metrics").text
    found = re.findall(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", text, flags=re.M)
    return {labels: float(value) for labels, value in found}


# --- answers --------------------------------------------------------------------------------


def test_answers_match_the_registered_model(client, reference):
    response = _classify(client, TEXTS, all_scores=True)
    assert response.status_code == 200, response.text
    body = response.json()
    _assert_matches(body["predictions"], TEXTS, reference)
    for text, prediction in zip(TEXTS, body["predictions"], strict=True):
        assert prediction["scores"] == pytest.approx(reference[text], abs=1e-4)
    assert body["model"] == {"name": NAME, "version": "1", "alias": "champion",
                             "bento_model": body["model"]["bento_model"]}
    assert body["model"]["bento_model"].startswith(f"{NAME}:v1-")


def test_scores_are_left_out_unless_asked(client):
    prediction = _classify(client, TEXTS[:1]).json()["predictions"][0]
    assert set(prediction) == {"label", "score", "scores"} and prediction["scores"] is None


def test_longest_allowed_text_is_truncated_not_rejected(client):
    response = _classify(client, ["what a film " * 166])  # 1992 chars, ~500 tokens > 128 positions
    assert response.status_code == 200, response.text


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(client, reference):
    batches = _metric(client, "bentoml_service_adaptive_batch_size_count")
    requests = _metric(client, "bentoml_service_adaptive_batch_size_sum")
    jobs = [[TEXTS[i % len(TEXTS)]] for i in range(64)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(lambda texts: _classify(client, texts), jobs))
    assert [r.status_code for r in responses] == [200] * len(jobs)
    for texts, response in zip(jobs, responses, strict=True):
        _assert_matches(response.json()["predictions"], texts, reference)
    n_batches = sum(_metric(client, "bentoml_service_adaptive_batch_size_count").values())
    n_requests = sum(_metric(client, "bentoml_service_adaptive_batch_size_sum").values())
    new_batches = n_batches - sum(batches.values())
    assert n_requests - sum(requests.values()) == len(jobs)
    assert new_batches < len(jobs), "no two requests shared a batch"


# --- bad input --------------------------------------------------------------------------------


BAD_JSON = [
    ({"texts": []}, "at least 1 item"),
    ({}, "Field required"),
    ({"texts": "one text"}, "valid array"),
    ({"texts": [1, 2]}, "valid string"),
    ({"texts": ["ok"], "all_scores": "yes"}, "valid boolean"),
    ({"texts": ["ok"], "top_k": 3}, "Extra inputs are not permitted"),
    ({"texts": ["ok"] * 65}, "at most 64 items"),
    ({"texts": ["x" * 2001]}, "at most 2000 characters"),
    ({"texts": [""]}, "at least 1 character"),
    ([["a list"]], "Input should be an object"),
]


@pytest.mark.parametrize(("body", "message"), BAD_JSON, ids=[m for _, m in BAD_JSON])
def test_invalid_bodies_get_400_with_the_reason(client, body, message):
    response = client.post("/classify", json=body)
    assert response.status_code == 400
    assert message in json.dumps(response.json())


@pytest.mark.parametrize(("content", "content_type", "status", "message"), [
    (b'{"texts": ["unclosed"', "application/json", 400, "Invalid JSON"),
    (b"texts=hello", "application/x-www-form-urlencoded", 415, "must be application/json"),
    (b'{"texts": ["' + b"a" * 1_100_000 + b'"]}', "application/json", 413, "too large"),
])
def test_malformed_unsupported_and_oversized_bodies(client, content, content_type, status,
                                                   message):
    response = client.post("/classify", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    assert message in response.text


def test_oversized_chunked_body_is_cut_off(client):
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must count bytes as they come
        yield b'{"texts": ["'
        for _ in range(20):
            yield b"a" * 100_000
        yield b'"]}'

    response = client.post("/classify", content=chunks(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_wrong_method_is_405(client):
    assert client.get("/classify").status_code == 405


# --- model, probes, metrics ---------------------------------------------------------------------


def test_model_endpoint_reports_version_metrics_and_lineage(client, served):
    from mlflow.tracking import MlflowClient

    info = client.get("/model").json()
    version = MlflowClient(served.tracking_uri).get_model_version_by_alias(NAME, "champion")
    assert (info["name"], info["version"], info["alias"]) == (NAME, str(version.version), "champion")
    assert info["labels"] == ["negative", "positive"]
    assert info["metrics"]["accuracy"] == pytest.approx(float(version.tags["metric.accuracy"]))
    assert info["lineage"]["run_id"] == version.run_id
    assert info["lineage"]["data_fingerprint"] == version.tags["data_fingerprint"]
    assert info["lineage"]["git_commit"] == version.tags["git_commit"]
    assert info["serving"]["batching"] is True


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
def test_probes(client, path):
    assert client.get(path).status_code == 200


def test_metrics_count_predictions_by_label(client):
    before = _metric(client, "tuneship_predictions_total")
    assert set(before) == {'{label="negative"}', '{label="positive"}'}  # both exist from start
    labels = [p["label"] for p in _classify(client, TEXTS).json()["predictions"]]
    after = _metric(client, "tuneship_predictions_total")
    for label in ("negative", "positive"):
        key = f'{{label="{label}"}}'
        assert after[key] - before[key] == labels.count(label)
    assert _metric(client, "bentoml_service_request_total")  # BentoML's own metrics too


# --- API key --------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"},
                                     {"x-api-key": "wrong"}, {"authorization": API_KEY}],
                         ids=["none", "wrong-bearer", "wrong-header", "no-scheme"])
def test_keyed_server_rejects_missing_or_wrong_keys(served, headers):
    for method, path in (("POST", "/classify"), ("GET", "/model")):
        response = httpx.request(method, f"{served.keyed.url}{path}", headers=headers,
                                 json={"texts": ["hi"]}, timeout=30)
        assert response.status_code == 401, (method, path)
        assert "API key" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{"authorization": f"Bearer {API_KEY}"},
                                     {"x-api-key": API_KEY}], ids=["bearer", "x-api-key"])
def test_keyed_server_accepts_the_key(served, headers):
    response = httpx.post(f"{served.keyed.url}/classify", json={"texts": ["hi"]},
                          headers=headers, timeout=30)
    assert response.status_code == 200, response.text


def test_probes_and_metrics_need_no_key_and_the_key_is_never_logged(served):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{served.keyed.url}{path}", timeout=30).status_code == 200
    assert API_KEY not in served.keyed.log.read_text()


def test_open_server_needs_no_key(client):
    assert _classify(client, ["hi"]).status_code == 200


def test_overload_is_a_clear_503_with_retry_after(served, tmp_path):
    """A batcher bound to answer within 1 ms sheds what it cannot: 503 "overloaded", not a 500
    "unexpected error", with Retry-After; a lone request still gets through."""
    env = isolated_env(served.bentoml_home.parent)
    model = httpx.get(f"{served.open.url}/model").json()["bento_model"]
    args = {"model_tag": model, "max_latency_ms": 1}
    with serving_source(env, tmp_path / "tight.log", args) as server:
        url = server.url
        assert httpx.get(f"{url}/model").json()["serving"]["max_latency_ms"] == 1
        for i in range(40):  # BentoML's batcher first times requests to learn, shedding none
            httpx.post(f"{url}/classify", json={"texts": [f"warm-up {i}"]}, timeout=60)
        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(lambda i: httpx.post(
                f"{url}/classify", json={"texts": [f"{t} {i}" for t in TEXTS]},
                timeout=60), range(96)))
        statuses = Counter(a.status_code for a in answers)
        assert set(statuses) <= {200, 503}, statuses
        shed = [a for a in answers if a.status_code == 503]
        assert shed, f"48 clients at once should overrun a 1 ms latency bound: {statuses}"
        for answer in shed:
            assert "overloaded" in answer.json()["error"], answer.text
            assert "max_latency_ms=1" in answer.json()["error"]
            assert answer.headers["retry-after"] == "1"
        alone = httpx.post(f"{url}/classify", json={"texts": TEXTS[:1]}, timeout=60)
        assert alone.status_code == 200, alone.text
