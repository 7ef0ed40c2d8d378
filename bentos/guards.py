"""ASGI middleware in front of the public service: API key, JSON bodies, request-size limit.

Runs before BentoML parses anything, so an oversized or unauthenticated request costs no model
work. Probes and `/metrics` stay open (Kubernetes and Prometheus call them without a key).
Every 503 (busy, overloaded, not ready) leaves with `Retry-After`, so clients back off instead
of retrying at once: clients that re-send at once take CPU from the requests being served and
lower the served throughput (measured with benchmarks/generate_load.py: bentos/README.md).

`delegated_prefixes` name routes that check their own callers (the fine-tuning jobs API mounted
in platform mode, bentos/platform_mode.py: owners' keys, multipart uploads with their own
limits): the guard passes them through, bounding only the bytes actually streamed
(`delegated_max_body_bytes`: e.g. a chunked upload without Content-Length).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("tuneship.guard")
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
OPENAI_PREFIX = "/v1/"  # answers there take OpenAI's error shape (openai_api.py)
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                413: "invalid_request_error", 415: "invalid_request_error", 503: "server_error"}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _digest(value: str) -> bytes:
    # Hashing first makes the comparison independent of the candidate's length too.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class Guard:
    """Reject what must not reach the service: 401 (key), 415 (not JSON), 413 (too large)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int,
                 open_paths: frozenset[str] = OPEN_PATHS, retry_after_s: int = 1,
                 delegated_prefixes: tuple[str, ...] = (),
                 delegated_max_body_bytes: int | None = None) -> None:
        self.app = app
        self._key = _digest(api_key) if api_key else None
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths
        self.retry_after = str(retry_after_s).encode()
        self.delegated = tuple(p.rstrip("/") for p in delegated_prefixes)
        self.delegated_max_body_bytes = delegated_max_body_bytes

    def is_delegated(self, path: str) -> bool:
        """`/v1/files` covers `/v1/files` and `/v1/files/...`, not `/v1/filesystem`."""
        return any(path == p or path.startswith(p + "/") for p in self.delegated)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_retry_after(send)
        if scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if self.is_delegated(scope["path"]):
            await self._delegate(scope, receive, send)
            return
        openai = scope["path"].startswith(OPENAI_PREFIX)
        if self._key is not None and not self._authorized(scope):
            log.warning("401 %s %s: missing or wrong API key", scope["method"], scope["path"])
            await _reject(send, 401, "missing or invalid API key: send 'Authorization: Bearer "
                          "<key>' or 'X-API-Key: <key>'", {"www-authenticate": "Bearer"},
                          openai=openai, code="invalid_api_key")
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            await _reject(send, 415, f"Content-Type must be application/json "
                          f"(got {content_type or 'none'!r})", openai=openai)
            return
        body = await self._read_body(scope, receive, send)
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    async def _delegate(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through; past `delegated_max_body_bytes` streamed, the app sees a disconnect
        and the client a 413 (unless the app had already answered)."""
        limit = self.delegated_max_body_bytes
        if limit is None or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        size, over, started = 0, False, False

        async def counted() -> Message:
            nonlocal size, over
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a cut-off body: ours (413) goes instead
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            log.warning("413 %s %s: body over %d bytes", scope["method"], scope["path"], limit)
            await _reject(send, 413, f"request body too large: over {limit} bytes", openai=True,
                          code="request_too_large")

    def _with_retry_after(self, send: Send) -> Send:
        """A `send` that adds `Retry-After` to a 503 answer that has none."""

        async def send_503_with_retry(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", ()))
                if not any(key.lower() == b"retry-after" for key, _ in headers):
                    message = {**message, "headers": [*headers, (b"retry-after",
                                                                 self.retry_after)]}
            await send(message)

        return send_503_with_retry

    def _authorized(self, scope: Scope) -> bool:
        assert self._key is not None
        bearer = _header(scope, b"authorization") or ""
        scheme, _, token = bearer.partition(" ")
        candidate = token.strip() if scheme.lower() == "bearer" else _header(scope, b"x-api-key")
        return hmac.compare_digest(_digest(candidate or ""), self._key)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413/400 (declared or actual size)."""
        openai = scope["path"].startswith(OPENAI_PREFIX)
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reject(send, 400, "invalid Content-Length header", openai=openai)
                return None
            if int(declared) > self.max_body_bytes:
                await _reject(send, 413, self._too_large(int(declared)), openai=openai,
                              code="request_too_large")
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _reject(send, 413, self._too_large(size), openai=openai,
                              code="request_too_large")
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _too_large(self, size: int) -> str:
        return f"request body too large: {size} bytes (limit {self.max_body_bytes})"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the buffered body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reject(send: Send, status: int, message: str,
                  headers: dict[str, str] | None = None, *, openai: bool = False,
                  code: str | None = None) -> None:
    error: Any = message
    if openai:  # {"error": {"message", "type", "param", "code"}}, as OpenAI clients expect
        error = {"message": message, "type": OPENAI_TYPES.get(status, "invalid_request_error"),
                 "param": None, "code": code}
    body = json.dumps({"error": error}).encode()
    raw_headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
