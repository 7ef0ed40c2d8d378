"""The inference table and Prometheus against real `bentoml serve` processes of the smoke bento.

`recorded` serves the classifier from a copy of bentos/ with the hook lines the service takes
(`wrapped.py` below: the InferenceLog middleware after the Guard, the `/feedback` route), so
this runs before those lines are in bentos/service.py. The Prometheus test scrapes that server
with the recording rules of deploy/monitoring/ and asks the HTTP API for its request rate.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.dataset as ds
import pytest

from tests.integration.conftest import (
    API_KEY,
    ROOT,
    Served,
    Server,
    _free_port,
    _start,
    _stop,
    _wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
EMAIL, CARD = "jane.doe@example.com", "4111 1111 1111 1111"
WRAPPED = '''"""Test only: service.py's Tuneship with the hook lines proposed for it (added here
only while service.py does not have them yet)."""
from inference_log import InferenceLog, feedback_endpoint, options
from service import ARGS, Tuneship, model_card, routes

if not any(route.path == "/feedback" for route in routes.routes):
    routes.add_route("/feedback", feedback_endpoint, methods=["POST"])
if not any(cls is InferenceLog for cls, _ in Tuneship.middlewares):
    Tuneship.add_asgi_middleware(InferenceLog, card=model_card, **options(ARGS))
'''


@pytest.fixture(scope="module")
def recorded(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Server, Path]]:
    """The smoke model served with recording on (redacted) and an API key; its table dir."""
    tmp = tmp_path_factory.mktemp("recorded")
    source = tmp / "bentos"
    shutil.copytree(ROOT / "bentos", source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "wrapped.py").write_text(WRAPPED)
    tag = httpx.get(f"{served.open.url}/model", timeout=10).json()["bento_model"]
    # A BENTOML_HOME of its own: servers sharing one share its Prometheus multiprocess folder,
    # and the last one started takes over the others' /metrics.
    shutil.copytree(served.bentoml_home / "models", tmp / "bentoml" / "models")
    env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "TUNESHIP_MODEL_TAG": tag,
           "TUNESHIP_API_KEY": API_KEY, "TUNESHIP_INFERENCE_LOG_DIR": str(tmp / "table"),
           "TUNESHIP_INFERENCE_LOG_PRIVACY": "redacted",
           "BENTOML_DO_NOT_TRACK": "true"}
    server = _start(env, tmp / "serve.log", "wrapped:Tuneship", ("--working-dir", str(source)))
    try:
        _wait_ready(server, time.monotonic() + 150)
        yield server, tmp / "table"
    finally:
        _stop(server)


def _rows(table: Path, want: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(table.glob("requests/date=*/*.parquet")):
            rows = ds.dataset(table / "requests", format="parquet",
                              partitioning="hive").to_table().to_pylist()
            if len(rows) >= want:
                return rows
        time.sleep(0.3)
    pytest.fail(f"fewer than {want} rows in {table} after {timeout} s")


def test_served_requests_are_recorded_redacted_with_feedback(recorded: tuple[Server, Path]) -> None:
    server, table = recorded
    text = f"mail {EMAIL} or pay with {CARD}: a gripping film"
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
        answer = client.post("/classify", json={"texts": [text, "a dull mess"]},
                             headers={"X-Request-Id": "e2e-1"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "e2e-1"
        assert httpx.post(f"{server.url}/feedback", json={"request_id": "e2e-1",
                                                            "label": "positive"}).status_code == 401
        assert client.post("/feedback", json={"request_id": "e2e-1", "label": "positive"}
                           ).status_code == 202
        [row] = [r for r in _rows(table, 1) if r["request_id"] == "e2e-1"]
        metrics = client.get("/metrics").text
    model = answer.json()["model"]
    assert (row["model_name"], row["model_version"]) == (model["name"], model["version"])
    assert row["model_runtime"] and row["status"] == 200 and row["latency_ms"] > 0
    assert row["labels"] == [p["label"] for p in answer.json()["predictions"]]
    assert row["input"] == ["mail [EMAIL] or pay with [CARD]: a gripping film", "a dull mess"]
    raw = b"".join(p.read_bytes() for p in table.rglob("*") if p.is_file())
    assert EMAIL.encode() not in raw and CARD.encode() not in raw
    assert 'tuneship_inference_log_written_total{table="requests"}' in metrics


@pytest.fixture()
def prometheus(recorded: tuple[Server, Path], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the recorded service every second, with our recording rules
    (that server has a BENTOML_HOME, hence /metrics, of its own: see `recorded`)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install prometheus (Debian) to run this test")
    target = recorded[0].url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy" / "monitoring" / "rules.yml")],
        "scrape_configs": [{"job_name": "tuneship", "static_configs": [{"targets": [target]}]}]}))
    port = _free_port()
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        if proc.poll() is None:
            proc.kill()


def _query(prom: str, expr: str) -> list[dict]:
    with contextlib.suppress(httpx.HTTPError):
        answer = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
        if answer.status_code == 200:
            return answer.json()["data"]["result"]
    return []


def test_prometheus_scrapes_the_service_and_returns_its_request_rate(
        recorded: tuple[Server, Path], prometheus: str) -> None:
    deadline = time.monotonic() + 120
    rate: list[dict] = []
    with httpx.Client(base_url=recorded[0].url, timeout=30, headers=AUTH) as client:
        while time.monotonic() < deadline and not rate:
            for _ in range(5):
                assert client.post("/classify", json={"texts": ["a fine film"]}).is_success
            rate = [r for r in _query(prometheus, 'tuneship:request_rate:rate1m'
                                                  '{endpoint="/classify"}')
                    if float(r["value"][1]) > 0]
            time.sleep(0.5)
    assert rate, (f"no request rate from Prometheus in 120 s: up {_query(prometheus, 'up')}; "
                  f"counter {_query(prometheus, 'bentoml_service_request_total')[:3]}; "
                  f"rule {_query(prometheus, 'tuneship:request_rate:rate1m')[:3]}")
    assert _query(prometheus, "up")[0]["value"][1] == "1"
    raw = _query(prometheus, 'sum(rate(bentoml_service_request_total{endpoint="/classify"}[30s]))')
    assert float(raw[0]["value"][1]) > 0
    # the inference table's own counter is scraped too (rows are written every 5 s)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _query(
            prometheus, 'tuneship_inference_log_written_total{table="requests"} > 1'):
        time.sleep(1)
    assert _query(prometheus, 'tuneship_inference_log_written_total{table="requests"} > 1')
