"""The inference table: one row per served request, written as Parquet partitioned by day.

`InferenceLog` is a pure ASGI middleware (responses, SSE streams included, pass through
untouched, chunk by chunk). For the recorded routes (`RECORDED`) it honours or assigns an
`X-Request-Id`, returns it on the answer, and copies the request and response bytes as they
pass. The request path does nothing else: the copy goes onto a bounded queue with
`put_nowait`; a background thread parses it (JSON bodies, OpenAI SSE chunks), applies the
privacy mode (privacy.py) and writes `<directory>/requests/date=YYYY-MM-DD/part-<ts>-<pid>-<n>
.parquet`. A full queue drops the record and counts it (`tuneship_inference_log_dropped_total`);
nothing a recording does can fail or delay a request.

`feedback_endpoint` (`POST /feedback`) appends `{request_id, label}` (classifier) or
`{request_id, rating}` (generation) under `<directory>/feedback/`; the join with the requests
happens when the table is read. The same thread prunes day partitions older than
`retention_days` and keeps `tuneship_drift_score` in step with the status file the drift
monitor writes (`<directory>/drift_status.json`).
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import json
import logging
import os
import queue
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy import PrivacyMode, descriptors, keep
from prometheus_client import Counter, Gauge
from starlette.requests import Request
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("tuneship.inference_log")
RECORDED = frozenset({"/classify", "/generate", "/generate_stream", "/v1/completions",
                      "/v1/chat/completions"})
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's id is kept only if it matches
MAX_CAPTURE_BYTES = 1 << 20  # per body; beyond it the copy stops (the answer is not touched)
STATUS_FILE = "drift_status.json"

WRITTEN = Counter("tuneship_inference_log_written", "Inference-table rows written", ["table"])
DROPPED = Counter("tuneship_inference_log_dropped", "Inference-table rows dropped, by reason "
                  "(buffer_full, not_sampled is not counted, write_error)", ["table", "reason"])
DRIFT = Gauge("tuneship_drift_score", "The drift monitor's last verdict on served traffic vs the "
              "training data, by kind: text = domain-classifier ROC AUC (0.5 none, 1 certain), "
              "label = 1 - p-value of the label shift, alarm = 1 when raised",
              ["model_name", "model_version", "kind"], multiprocess_mode="mostrecent")


@dataclass
class Captured:
    """One request as it passed: raw bytes and timings; parsed later by the writer."""

    request_id: str
    path: str
    started: float  # time.time()
    body: bytearray = field(default_factory=bytearray)
    status: int = 0
    content_type: str = ""
    answer: bytearray = field(default_factory=bytearray)
    first_byte_s: float | None = None
    latency_s: float = 0.0
    truncated: bool = False
    sampling_rate: float = 1.0


class InferenceLog:
    """ASGI middleware recording `RECORDED` routes into the inference table (see module doc).

    `directory=None` turns recording off (request ids are still assigned and returned).
    `card` gives the served model's name/version/runtime (a dict or a function returning one,
    called once in the writer), used where an answer does not name its model.
    """

    def __init__(self, app: ASGIApp, *, directory: str | os.PathLike[str] | None,
                 sample_rate: float = 1.0, privacy: str = PrivacyMode.REDACTED,
                 retention_days: int = 30, buffer_size: int = 10_000,
                 flush_rows: int = 1000, flush_interval_s: float = 5.0,
                 card: dict[str, Any] | Callable[[], dict[str, Any]] | None = None) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"inference log sample_rate must be in [0, 1] (got {sample_rate})")
        if retention_days < 1:
            raise ValueError(f"inference log retention_days must be >= 1 (got {retention_days})")
        if privacy not in set(PrivacyMode):
            raise ValueError(f"inference log privacy must be one of "
                             f"{', '.join(PrivacyMode)} (got {privacy!r})")
        self.app = app
        self.sample_rate = sample_rate
        self.writer = (Writer(Path(directory), PrivacyMode(privacy), retention_days,
                              buffer_size, flush_rows, flush_interval_s, card)
                       if directory else None)
        global ACTIVE
        ACTIVE = self.writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.writer is not None:
            await self.app(scope, self._closing_on_shutdown(receive), send)
            return
        if scope["type"] != "http" or scope["path"] not in RECORDED:
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        sampled = self.writer is not None and (self.sample_rate >= 1.0
                                               or random.random() < self.sample_rate)
        if not sampled:
            await self.app(scope, receive, _with_id(send, request_id))
            return
        record = Captured(request_id, scope["path"], time.time(), sampling_rate=self.sample_rate)
        start = time.perf_counter()
        try:
            await self.app(scope, _copying_receive(receive, record),
                           _copying_send(_with_id(send, request_id), record, start))
        finally:
            record.latency_s = time.perf_counter() - start
            self.writer.submit("requests", record)  # type: ignore[union-attr]


    def _closing_on_shutdown(self, receive: Receive) -> Receive:
        """`receive` for the lifespan scope: on `lifespan.shutdown` (the server stopping, e.g.
        on SIGTERM) the writer writes what is queued before the app shuts down."""
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.writer.close)  # type: ignore[union-attr]
            return message

        return wrapped


def options(args: Any, env: MutableMapping[str, str] = os.environ) -> dict[str, Any]:
    """InferenceLog settings from the bento arguments (`inference_log_*` fields of ServeArgs,
    where present) with TUNESHIP_INFERENCE_LOG_{DIR,SAMPLE_RATE,PRIVACY,RETENTION_DAYS} winning;
    no directory = off."""
    def pick(name: str, default: Any) -> Any:
        value = env.get(f"TUNESHIP_INFERENCE_LOG_{name.upper()}")
        return value if value not in (None, "") else getattr(args, f"inference_log_{name}",
                                                             default)

    return {"directory": pick("dir", None) or None,
            "sample_rate": float(pick("sample_rate", 1.0)),
            "privacy": str(pick("privacy", PrivacyMode.REDACTED)),
            "retention_days": int(pick("retention_days", 30)),
            "buffer_size": int(pick("buffer_size", 10_000))}


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            if REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


def _with_id(send: Send, request_id: str) -> Send:
    header = (b"x-request-id", request_id.encode())

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
            message = {**message, "headers": [*headers, header]}
        await send(message)

    return send_with_id


def _copying_receive(receive: Receive, record: Captured) -> Receive:
    async def copying() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            _append(record.body, message.get("body", b""), record)
        return message

    return copying


def _copying_send(send: Send, record: Captured, start: float) -> Send:
    async def copying(message: Message) -> None:
        if message["type"] == "http.response.start":
            record.status = message["status"]
            for key, value in message.get("headers", ()):
                if key.lower() == b"content-type":
                    record.content_type = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk and record.first_byte_s is None:
                record.first_byte_s = time.perf_counter() - start
            _append(record.answer, chunk, record)
        await send(message)

    return copying


def _append(buffer: bytearray, chunk: bytes, record: Captured) -> None:
    room = MAX_CAPTURE_BYTES - len(buffer)
    if len(chunk) > room:
        record.truncated = True
        chunk = chunk[:max(room, 0)]
    buffer += chunk


# --- feedback ----------------------------------------------------------------------------------

ACTIVE: Writer | None = None  # the writer of the InferenceLog in this process, if recording


async def feedback_endpoint(request: Request) -> JSONResponse:
    """`POST /feedback {request_id, label}` or `{request_id, rating}` (1 to 5), optional
    `comment`: 202 once queued. The request id is the `X-Request-Id` of the answer rated."""
    if ACTIVE is None:
        return JSONResponse({"error": "feedback needs the inference table: start the service "
                                      "with an inference log directory"}, status_code=503)
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
    error = _feedback_error(body)
    if error:
        return JSONResponse({"error": error}, status_code=400)
    record = {"request_id": body["request_id"], "label": body.get("label"),
              "rating": body.get("rating"), "comment": body.get("comment"),
              "time": dt.datetime.now(dt.UTC)}
    if not ACTIVE.submit("feedback", record):
        return JSONResponse({"error": "feedback buffer full; retry later"}, status_code=503)
    return JSONResponse({"request_id": body["request_id"], "accepted": True}, status_code=202)


def _feedback_error(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    unknown = set(body) - {"request_id", "label", "rating", "comment"}
    if unknown:
        return f"unknown field(s): {sorted(unknown)}"
    if not isinstance(body.get("request_id"), str) or not REQUEST_ID.fullmatch(body["request_id"]):
        return "request_id: the X-Request-Id of the answer (1 to 128 of A-Z a-z 0-9 . _ : -)"
    label, rating = body.get("label"), body.get("rating")
    if (label is None) == (rating is None):
        return "send exactly one of label (classifier) or rating (generation)"
    if label is not None and (not isinstance(label, str) or not 0 < len(label) <= 200):
        return "label: a string of 1 to 200 characters"
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int)
                               or not 1 <= rating <= 5):
        return "rating: an integer from 1 to 5"
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 2000):
        return "comment: a string of at most 2000 characters"
    return None


# --- the writer --------------------------------------------------------------------------------


class Writer:
    """Bounded queue + one daemon thread writing Parquet parts (see module doc)."""

    def __init__(self, directory: Path, privacy: PrivacyMode, retention_days: int,
                 buffer_size: int, flush_rows: int, flush_interval_s: float,
                 card: dict[str, Any] | Callable[[], dict[str, Any]] | None) -> None:
        self.directory = directory
        self.privacy = privacy
        self.retention_days = retention_days
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self._card_source = card
        self._card: dict[str, Any] | None = None
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=buffer_size)
        self._seq = 0
        self._status_mtime = 0.0
        self._pruned_day: dt.date | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        for table in ("requests", "feedback"):
            WRITTEN.labels(table=table)
            for reason in ("buffer_full", "write_error"):
                DROPPED.labels(table=table, reason=reason)

    def submit(self, table: str, record: Any) -> bool:
        """Queue a record without waiting; False (and counted) when the buffer is full."""
        self._ensure_thread()
        try:
            self._queue.put_nowait((table, record))
            return True
        except queue.Full:
            DROPPED.labels(table=table, reason="buffer_full").inc()
            return False

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the thread (also run at interpreter exit)."""
        if self._thread is None:
            return
        self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:  # started lazily: the middleware is built before worker processes fork
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inference-log",
                                                daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def _run(self) -> None:
        pending: dict[str, list[Any]] = {"requests": [], "feedback": []}
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = ("", None)
            if item is not None and item[1] is not None:
                pending[item[0]].append(item[1])
            due = time.monotonic() >= deadline
            if item is None or due or sum(map(len, pending.values())) >= self.flush_rows:
                self._flush(pending)
                self._housekeeping()
                deadline = time.monotonic() + self.flush_interval_s
            if item is None:
                return

    def _flush(self, pending: dict[str, list[Any]]) -> None:
        for table, records in pending.items():
            if not records:
                continue
            try:
                rows = [self._row(r) for r in records] if table == "requests" else \
                    [self._feedback_row(r) for r in records]
                self._write(table, rows)
                WRITTEN.labels(table=table).inc(len(rows))
            except Exception:  # a bad disk must not take the thread down with it
                log.exception("inference log: %d %s rows not written", len(records), table)
                DROPPED.labels(table=table, reason="write_error").inc(len(records))
            records.clear()

    def _write(self, table: str, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = request_schema() if table == "requests" else feedback_schema()
        by_day: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_day.setdefault(row["time"].date().isoformat(), []).append(row)
        for day, day_rows in by_day.items():
            folder = self.directory / table / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            name = f"part-{int(time.time() * 1000)}-{os.getpid()}-{self._seq}.parquet"
            tmp = folder / f".{name}.tmp"  # readers skip dot files: never a half-written part
            pq.write_table(pa.Table.from_pylist(day_rows, schema=schema), tmp)
            tmp.rename(folder / name)

    def _housekeeping(self) -> None:
        try:
            self._prune()
            self._read_status()
        except Exception:
            log.exception("inference log housekeeping failed")

    def _prune(self) -> None:
        """Remove day partitions older than retention (once a day per process)."""
        today = dt.datetime.now(dt.UTC).date()
        if self._pruned_day == today:
            return
        self._pruned_day = today
        oldest = today - dt.timedelta(days=self.retention_days - 1)
        for folder in self.directory.glob("*/date=*"):
            try:
                day = dt.date.fromisoformat(folder.name.removeprefix("date="))
            except ValueError:
                continue
            if day < oldest:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("inference log: removed %s (retention %d days)", folder,
                         self.retention_days)

    def _read_status(self) -> None:
        """`tuneship_drift_score` from the monitor's status file, when it changed."""
        path = self.directory / STATUS_FILE
        if not path.is_file() or path.stat().st_mtime == self._status_mtime:
            return
        self._status_mtime = path.stat().st_mtime
        status = json.loads(path.read_text())
        for kind, score in status.get("scores", {}).items():
            DRIFT.labels(model_name=status.get("model_name", ""),
                         model_version=str(status.get("model_version", "")),
                         kind=kind).set(float(score))

    @property
    def card(self) -> dict[str, Any]:
        if self._card is None:
            source = self._card_source
            try:
                self._card = (source() if callable(source) else source) or {}
            except Exception:  # the model store unreadable: rows carry what answers say
                log.exception("inference log: model card unavailable")
                self._card = {}
        return self._card

    def _row(self, record: Captured) -> dict[str, Any]:
        parsed = parse(record)
        card = self.card
        ref = parsed.pop("model", None)
        name = ref.get("name") if isinstance(ref, dict) else ref
        version = ref.get("version") if isinstance(ref, dict) else None
        inputs, outputs = parsed.pop("inputs"), parsed.pop("outputs")
        row = {"request_id": record.request_id, "time": dt.datetime.fromtimestamp(
                   record.started, dt.UTC),
               "endpoint": record.path, "status": record.status,
               "latency_ms": record.latency_s * 1000,
               "first_byte_ms": None if record.first_byte_s is None else
               record.first_byte_s * 1000,
               "model_name": name or card.get("name"),
               "model_version": str(version or card.get("version") or "") or None,
               "model_runtime": _runtime(card), "sampling_rate": record.sampling_rate,
               "privacy": str(self.privacy), "truncated": record.truncated,
               "input": [keep(t, self.privacy) for t in inputs] if inputs is not None else None,
               "output": [keep(t, self.privacy) for t in outputs] if outputs is not None
               else None,
               "input_chars": _lengths(inputs, "chars"), "input_words": _lengths(inputs, "words"),
               "output_chars": _lengths(outputs, "chars"), **parsed}
        if self.privacy is PrivacyMode.STATS_ONLY:
            row["input"] = row["output"] = None
        row["error"] = keep(row.get("error"), self.privacy)
        return row

    def _feedback_row(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "comment": keep(record.get("comment"), self.privacy)}


def _runtime(card: dict[str, Any]) -> str | None:
    """The card's runtime: `runtime`, else `serving.runtime`, else `serving.runtime_requested`
    (the classifier's `auto` or a name; the runtime it chose is known only to the Classifier)."""
    serving = card.get("serving") or {}
    found = card.get("runtime") or serving.get("runtime") or serving.get("runtime_requested")
    return str(found) if isinstance(found, str) else None


def _lengths(texts: list[str] | None, key: str) -> list[int] | None:
    return None if texts is None else [descriptors(t)[key] for t in texts]


# --- parsing what passed -----------------------------------------------------------------------


def parse(record: Captured) -> dict[str, Any]:
    """The fields of a row that come from the bodies: inputs, outputs, labels, usage, model."""
    out: dict[str, Any] = {"inputs": _inputs(record.path, _json(record.body)), "outputs": None,
                           "labels": None, "scores": None, "finish_reason": None,
                           "prompt_tokens": None, "completion_tokens": None,
                           "total_tokens": None, "streamed": False, "error": None, "model": None}
    text = bytes(record.answer).decode("utf-8", "replace")
    if record.content_type.startswith("text/event-stream"):
        out["streamed"] = True
        _from_sse(text, out)
    elif record.content_type.startswith("text/plain") and record.status < 400:
        out["streamed"] = True
        out["outputs"] = [text]  # /generate_stream: the text itself
    else:
        _from_json(record.path, _json(record.answer), out)
    return out


def _json(raw: bytes | bytearray) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _inputs(path: str, body: Any) -> list[str] | None:
    if not isinstance(body, dict):
        return None
    if path == "/classify":
        texts = body.get("texts")
    elif path == "/v1/chat/completions":
        texts = [_content(m.get("content")) for m in body.get("messages") or []
                 if isinstance(m, dict)]
    else:
        texts = body.get("prompt")
    texts = [texts] if isinstance(texts, str) else texts
    return [t for t in texts if isinstance(t, str)] if isinstance(texts, list) else None


def _content(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _from_json(path: str, body: Any, out: dict[str, Any]) -> None:
    if not isinstance(body, dict):
        return
    out["model"] = body.get("model")
    if "error" in body:
        error = body["error"]
        out["error"] = error.get("message") if isinstance(error, dict) else str(error)
        return
    if path == "/classify":
        predictions = [p for p in body.get("predictions") or [] if isinstance(p, dict)]
        out["labels"] = [str(p.get("label")) for p in predictions]
        out["scores"] = [float(p.get("score", 0.0)) for p in predictions]
        out["outputs"] = out["labels"]
    elif path == "/generate":
        out["outputs"] = [body.get("text", "")]
        out["finish_reason"] = body.get("finish_reason")
    else:
        choices = body.get("choices") or []
        out["outputs"] = [c.get("text") or _content((c.get("message") or {}).get("content"))
                          for c in choices]
        out["finish_reason"] = next((c.get("finish_reason") for c in choices), None)
    _usage(body.get("usage"), out)


def _from_sse(text: str, out: dict[str, Any]) -> None:
    """OpenAI SSE: each choice's text (deltas concatenated), finish reason, usage, model."""
    pieces: dict[int, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        chunk = _json(line[5:].strip().encode())
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            error = chunk["error"]
            out["error"] = error.get("message") if isinstance(error, dict) else str(error)
        out["model"] = chunk.get("model", out["model"])
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            pieces.setdefault(choice.get("index", 0), []).append(delta)
            out["finish_reason"] = choice.get("finish_reason") or out["finish_reason"]
        _usage(chunk.get("usage"), out)
    out["outputs"] = ["".join(pieces[i]) for i in sorted(pieces)]


def _usage(usage: Any, out: dict[str, Any]) -> None:
    if isinstance(usage, dict):
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if isinstance(usage.get(key), int):
                out[key] = usage[key]


def request_schema() -> Any:
    """The requests table's columns (pyarrow is imported by the writer only)."""
    import pyarrow as pa

    texts, ints = pa.list_(pa.string()), pa.list_(pa.int32())
    return pa.schema([
        ("request_id", pa.string()), ("time", pa.timestamp("ms", tz="UTC")),
        ("endpoint", pa.string()), ("status", pa.int16()), ("latency_ms", pa.float64()),
        ("first_byte_ms", pa.float64()), ("model_name", pa.string()),
        ("model_version", pa.string()), ("model_runtime", pa.string()),
        ("sampling_rate", pa.float32()), ("privacy", pa.string()), ("truncated", pa.bool_()),
        ("input", texts), ("output", texts), ("input_chars", ints), ("input_words", ints),
        ("output_chars", ints), ("labels", texts), ("scores", pa.list_(pa.float32())),
        ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()), ("total_tokens", pa.int32()),
        ("streamed", pa.bool_()), ("error", pa.string())])


def feedback_schema() -> Any:
    """The feedback table's columns."""
    import pyarrow as pa

    return pa.schema([("request_id", pa.string()), ("time", pa.timestamp("ms", tz="UTC")),
                      ("label", pa.string()), ("rating", pa.int8()), ("comment", pa.string())])


def read_table(directory: str | os.PathLike[str], table: str = "requests") -> Any:
    """A table as a pyarrow Table (hive `date` partitions; dot files skipped), or None."""
    import pyarrow.dataset as ds

    root = Path(directory) / table
    if not any(root.glob("date=*/*.parquet")):
        return None
    return ds.dataset(root, format="parquet", partitioning="hive").to_table()
