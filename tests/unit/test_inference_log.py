"""The inference table (bentos/inference_log.py) around a small Starlette app, in process.

The app answers like the services do (`/classify` JSON, `/v1/chat/completions` SSE); the
guard (bentos/guards.py) sits in front as in the services. Files are read back with pyarrow.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
BENTOS = Path(__file__).resolve().parents[2] / "bentos"
sys.path.insert(0, str(BENTOS))
try:
    guards, inference_log = importlib.import_module("guards"), importlib.import_module(
        "inference_log")
finally:
    sys.path.remove(str(BENTOS))

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EMAIL, CARD = "jane.doe@example.com", "4111 1111 1111 1111"
PII_TEXT = f"mail {EMAIL}, card {CARD}, a gripping film"
MODEL = {"name": "tuneship-sst2", "version": "7", "alias": "champion", "bento_model": "m:1"}


async def classify(request: Request) -> JSONResponse:
    texts = (await request.json())["texts"]
    if any("reject" in t for t in texts):  # a 400 that echoes the input, as pydantic errors do
        return JSONResponse({"error": f"texts: invalid value {texts[0]!r}"}, status_code=400)
    return JSONResponse({"predictions": [{"label": "positive", "score": 0.75} for _ in texts],
                         "model": MODEL})


async def chat(request: Request) -> StreamingResponse:
    await request.json()

    async def events():
        frame = {"id": "c1", "object": "chat.completion.chunk", "model": "shakespeare"}
        yield "data: " + json.dumps({**frame, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}}]}) + "\n\n"
        for piece in ("But soft, ", "what light ", f"mail {EMAIL}"):
            await asyncio.sleep(0)
            yield "data: " + json.dumps({**frame, "choices": [
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}]}) + "\n\n"
        yield "data: " + json.dumps({**frame, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "length"}]}) + "\n\n"
        yield "data: " + json.dumps({**frame, "choices": [], "usage": {
            "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build(directory: Path | None, **options: Any) -> tuple[Any, Any]:
    """(the guarded app, the InferenceLog inside it), routes as the services mount them."""
    app = Starlette(routes=[Route("/classify", classify, methods=["POST"]),
                            Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/feedback", inference_log.feedback_endpoint,
                                  methods=["POST"]),
                            Route("/healthz", healthz)])
    options = {"flush_interval_s": 0.2, "card": {**MODEL, "serving": {"runtime": "torch-fp32"}},
               **options}
    recorder = inference_log.InferenceLog(app, directory=directory, **options)
    return guards.Guard(recorder, api_key=KEY, max_body_bytes=65536), recorder


def rows(directory: Path, table: str = "requests") -> list[dict[str, Any]]:
    return ds.dataset(directory / table, format="parquet", partitioning="hive").to_table() \
        .to_pylist()


def every_byte(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_classify_row_has_the_fields(tmp_path: Path) -> None:
    app, recorder = build(tmp_path, privacy="full")
    with TestClient(app) as client:
        answer = client.post("/classify", json={"texts": ["a gripping film", "dull"]},
                             headers={**AUTH, "X-Request-Id": "client-id-1"})
        fresh = client.post("/classify", json={"texts": ["fine"]}, headers=AUTH)
        assert client.get("/healthz").headers.get("x-request-id") is None  # not recorded
    recorder.writer.close()
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "client-id-1"
    assert len(fresh.headers["x-request-id"]) == 32  # assigned: uuid4 hex
    by_id = {r["request_id"]: r for r in rows(tmp_path)}
    row = by_id["client-id-1"]
    assert row["endpoint"] == "/classify" and row["status"] == 200
    assert (row["model_name"], row["model_version"], row["model_runtime"]) == \
        ("tuneship-sst2", "7", "torch-fp32")
    assert row["input"] == ["a gripping film", "dull"]
    assert row["labels"] == ["positive", "positive"] and row["scores"] == [0.75, 0.75]
    assert row["input_chars"] == [15, 4] and row["latency_ms"] > 0
    assert set(by_id) == {"client-id-1", fresh.headers["x-request-id"]}
    assert (tmp_path / "requests" / f"date={row['time'].date().isoformat()}").is_dir()


def test_server_shutdown_writes_what_is_queued(tmp_path: Path) -> None:
    # A long flush interval: only the lifespan shutdown (a server stopping on SIGTERM) writes.
    app, recorder = build(tmp_path, flush_interval_s=3600, flush_rows=10_000)
    with TestClient(app) as client:  # leaving it runs the ASGI lifespan shutdown
        for i in range(5):
            assert client.post("/classify", json={"texts": [f"text {i}"]},
                               headers=AUTH).status_code == 200
        assert not (tmp_path / "requests").exists()  # still queued
    assert len(rows(tmp_path)) == 5
    assert recorder.writer._thread is None  # stopped


def test_sse_is_passed_through_and_its_text_recorded(tmp_path: Path) -> None:
    app, recorder = build(tmp_path, privacy="full")
    body = {"messages": [{"role": "user", "content": "ROMEO:"}], "stream": True}
    with TestClient(app) as client, client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                                  json=body) as answer:
        chunks = list(answer.iter_raw())
    recorder.writer.close()
    assert len(chunks) >= 5  # chunk by chunk, not buffered into one
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    [row] = rows(tmp_path)
    assert row["streamed"] and row["input"] == ["ROMEO:"]
    assert row["output"] == [f"But soft, what light mail {EMAIL}"]
    assert row["model_name"] == "shakespeare" and row["finish_reason"] == "length"
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (5, 4, 9)
    assert row["first_byte_ms"] <= row["latency_ms"]


def test_middleware_leaves_the_asgi_messages_untouched(tmp_path: Path) -> None:
    async def messages(app: Any) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        incoming = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(dict(message))

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"r1")],
                 "query_string": b"", "http_version": "1.1", "scheme": "http",
                 "server": ("t", 80), "client": ("c", 1), "root_path": ""}
        await app(scope, receive, send)
        return sent

    bare = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    recorder = inference_log.InferenceLog(bare, directory=tmp_path)
    plain, recorded = asyncio.run(messages(bare)), asyncio.run(messages(recorder))
    recorder.writer.close()
    assert [m for m in recorded if m["type"] == "http.response.body"] == \
        [m for m in plain if m["type"] == "http.response.body"]
    assert (b"x-request-id", b"r1") in recorded[0]["headers"]


@pytest.mark.parametrize("mode", ["full", "redacted", "stats-only"])
def test_privacy_modes(tmp_path: Path, mode: str) -> None:
    app, recorder = build(tmp_path, privacy=mode)
    with TestClient(app) as client:
        assert client.post("/classify", json={"texts": [PII_TEXT]}, headers=AUTH).is_success
        assert client.post("/classify", json={"texts": [f"reject {PII_TEXT}"]},
                           headers=AUTH).status_code == 400
        with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                           json={"messages": [{"role": "user", "content": PII_TEXT}]}) as sse:
            sse.read()
        rid = client.post("/classify", json={"texts": ["x"]}, headers=AUTH).headers[
            "x-request-id"]
        assert client.post("/feedback", json={"request_id": rid, "label": "negative",
                                              "comment": f"reach me at {EMAIL}"},
                           headers=AUTH).status_code == 202
    recorder.writer.close()
    table = rows(tmp_path)
    stored = json.dumps(table + rows(tmp_path, "feedback"), default=str)
    raw = every_byte(tmp_path)
    assert len(table) == 4 and all(r["privacy"] == mode for r in table)
    ok = next(r for r in table if r["endpoint"] == "/classify" and r["status"] == 200
              and r["input_chars"] == [len(PII_TEXT)])
    assert ok["labels"] == ["positive"]  # predictions are kept in every mode
    if mode == "full":
        assert EMAIL in stored and ok["input"] == [PII_TEXT]
        return
    for secret in (EMAIL, CARD, "4111111111111111", "jane.doe"):
        assert secret not in stored and secret.encode() not in raw
    if mode == "redacted":
        assert ok["input"] == ["mail [EMAIL], card [CARD], a gripping film"]
        assert "[EMAIL]" in next(r for r in table if r["status"] == 400)["error"]
    else:
        assert all(r["input"] is None and r["output"] is None and r["error"] is None
                   for r in table)
        assert "gripping" not in stored


def test_sampling(tmp_path: Path) -> None:
    app, recorder = build(tmp_path, sample_rate=0.0)
    with TestClient(app) as client:
        answers = [client.post("/classify", json={"texts": ["x"]}, headers=AUTH)
                   for _ in range(5)]
    assert all(a.is_success and a.headers["x-request-id"] for a in answers)
    assert not (tmp_path / "requests").exists()


def _scope(path: str = "/classify") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "query_string": b"",
            "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
            "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": ""}


async def _call(app: Any, body: bytes) -> int:
    """One request straight through the ASGI app; its status."""
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        status = message.get("status", status)

    await app(_scope(), receive, send)
    return status


def test_a_full_buffer_drops_without_failing_or_slowing_requests(tmp_path: Path) -> None:
    """The writer is stalled (its card lookup blocks) with room for 2 rows: every request still
    answers 200 at the speed of the app without recording; the rest are counted as dropped."""
    release = threading.Event()
    n, rounds = 200, 5
    bare = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
    recorder = inference_log.InferenceLog(bare, directory=tmp_path, buffer_size=2, flush_rows=1,
                                          card=lambda: release.wait(60) and MODEL)
    dropped_before = counter("tuneship_inference_log_dropped_total", table="requests",
                             reason="buffer_full")
    written_before = counter("tuneship_inference_log_written_total", table="requests")

    async def measure(app: Any) -> tuple[float, float]:
        """(mean, max) seconds per request over n requests."""
        times = []
        for i in range(n):
            start = time.perf_counter()
            assert await _call(app, json.dumps({"texts": [f"text {i}"]}).encode()) == 200
            times.append(time.perf_counter() - start)
        return sum(times) / n, max(times)

    async def interleaved() -> tuple[list[float], list[float], float]:
        off, on, worst = [], [], 0.0
        for _ in range(rounds):  # alternate, so load from other jobs falls on both alike
            off.append((await measure(bare))[0])
            mean, slowest = await measure(recorder)
            on.append(mean)
            worst = max(worst, slowest)
        return off, on, worst

    off, on, worst = asyncio.run(interleaved())
    dropped = counter("tuneship_inference_log_dropped_total", table="requests",
                      reason="buffer_full") - dropped_before
    release.set()
    recorder.writer.close()
    written = counter("tuneship_inference_log_written_total", table="requests") - written_before
    total = n * rounds
    assert dropped >= total - 3 and written + dropped == total
    assert len(rows(tmp_path)) == written
    overhead = sorted(on)[rounds // 2] - sorted(off)[rounds // 2]  # medians of the round means
    assert overhead < 0.001, (off, on)  # the copy and a put_nowait: far under a millisecond
    assert worst < 0.25, worst  # no request waited for the stalled writer


def test_feedback_validation_and_auth(tmp_path: Path) -> None:
    app, recorder = build(tmp_path)
    with TestClient(app) as client:
        assert client.post("/feedback", json={"request_id": "r1", "label": "x"}).status_code \
            == 401  # the guard checks the key on /feedback
        for bad in ({"request_id": "r1"}, {"request_id": "r1", "label": "a", "rating": 3},
                    {"request_id": "r 1", "label": "a"}, {"request_id": "r1", "rating": 9},
                    {"request_id": "r1", "rating": True}, {"request_id": "r1", "x": 1},
                    ["r1"]):
            answer = client.post("/feedback", json=bad, headers=AUTH)
            assert answer.status_code == 400 and answer.json()["error"], bad
        assert client.post("/feedback", json={"request_id": "r1", "rating": 4},
                           headers=AUTH).status_code == 202
    recorder.writer.close()
    [row] = rows(tmp_path, "feedback")
    assert (row["request_id"], row["rating"], row["label"]) == ("r1", 4, None)


def test_feedback_without_a_table_is_refused() -> None:
    app, _ = build(None)
    with TestClient(app) as client:
        answer = client.post("/feedback", json={"request_id": "r1", "label": "x"}, headers=AUTH)
    assert answer.status_code == 503 and "inference log directory" in answer.json()["error"]


def test_retention_prunes_old_days_and_drift_status_sets_the_gauge(tmp_path: Path) -> None:
    old = tmp_path / "requests" / "date=2000-01-01"
    old.mkdir(parents=True)
    (old / "part-1-1-1.parquet").write_bytes(b"")
    (tmp_path / inference_log.STATUS_FILE).write_text(json.dumps(
        {"model_name": "tuneship-sst2", "model_version": "7", "scores": {"text": 0.93}}))
    app, recorder = build(tmp_path, retention_days=7)
    with TestClient(app) as client:
        client.post("/classify", json={"texts": ["x"]}, headers=AUTH)
    recorder.writer.close()
    assert not old.exists() and len(rows(tmp_path)) == 1
    assert REGISTRY.get_sample_value("tuneship_drift_score", {
        "model_name": "tuneship-sst2", "model_version": "7", "kind": "text"}) == 0.93


def test_bad_settings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        inference_log.InferenceLog(healthz, directory=tmp_path, sample_rate=2)
    with pytest.raises(ValueError, match="stats-only"):
        inference_log.InferenceLog(healthz, directory=tmp_path, privacy="none")


def test_options_from_bento_arguments_and_environment() -> None:
    class Args:
        inference_log_dir = "/srv/log"
        inference_log_privacy = "full"

    assert inference_log.options(Args(), {}) == {
        "directory": "/srv/log", "sample_rate": 1.0, "privacy": "full", "retention_days": 30,
        "buffer_size": 10_000}
    env = {"TUNESHIP_INFERENCE_LOG_DIR": "/tmp/t", "TUNESHIP_INFERENCE_LOG_SAMPLE_RATE": "0.25",
           "TUNESHIP_INFERENCE_LOG_PRIVACY": "stats-only"}
    got = inference_log.options(object(), env)
    assert (got["directory"], got["sample_rate"], got["privacy"]) == ("/tmp/t", 0.25,
                                                                      "stats-only")
    assert inference_log.options(object(), {})["directory"] is None  # off by default
