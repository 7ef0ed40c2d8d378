"""OpenAI-compatible routes over the engine (bentos/engine.py): a Starlette app for `/v1`.

`generation.py` mounts it with `@bentoml.asgi_app(app, path="/v1")`, so BentoML's `/healthz`,
`/readyz` and `/metrics` stay, and `guards.Guard` (API key, JSON bodies, body size) runs in
front of it with OpenAI-shaped errors. Any OpenAI client works against it:

    client = openai.OpenAI(base_url="http://127.0.0.1:3000/v1", api_key="<TUNESHIP_API_KEY or any>")
    client.chat.completions.create(model="tuneship-shakespeare_lora", messages=[...])

Routes: `GET /v1/models` (the base model and each LoRA adapter, with `parent` and
`max_model_len`), `GET /v1/models/{id}`, `POST /v1/completions`, `POST /v1/chat/completions`
(the tokenizer's chat template). `model` picks the base model (its registered name or bento tag)
or an adapter by name. Parameters honoured: `max_tokens` / `max_completion_tokens`,
`temperature` (OpenAI's default 1), `top_p`, `n` (at most `max_n`), `stop` (a string or a list),
`seed`, `presence_penalty`, `frequency_penalty`, `stream`, `stream_options.include_usage`,
`user` (logged only). Other OpenAI parameters are accepted only at their default value and
rejected with a 400 that names them otherwise; unknown fields get a 400 too.

Errors are `{"error": {"message", "type", "param", "code"}}`: 400 bad parameter (prompt tokens +
max_tokens over the context names both numbers), 404 unknown model, 429 with `Retry-After` when
the engine's queue is full, 503 while the model loads. Streams are server-sent events, one
`data: {json}` per chunk and a final `data: [DONE]`; with `include_usage` a last chunk with
empty `choices` carries the token counts. A client that closes a stream cancels its requests
(the engine frees their places at its next step).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from engine import (
    Delta,
    Engine,
    EngineFull,
    EngineStopped,
    InvalidRequest,
    Request,
    SamplingParams,
    UnknownAdapter,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("tuneship.openai")
STOP_CHARS = 64
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               404: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
               503: "server_error"}


# --- what the service hands the routes ---------------------------------------------------------


@dataclass
class ServedModel:
    """The served base model, its engine and the request limits (set on `app.state.llm`)."""

    engine: Engine
    tokenizer: Any
    model_id: str                         # the base model's id in `model` and /v1/models
    aliases: frozenset[str] = frozenset()  # other ids accepted for the base (e.g. the bento tag)
    created: int = field(default_factory=lambda: int(time.time()))
    max_tokens_limit: int = 256           # the most a request may ask for
    default_max_tokens: int = 16          # when a request does not say
    repetition_penalty: float = 1.0       # the registered model's inference default
    max_n: int = 4
    max_stop: int = 4
    max_prompts: int = 8                  # prompts in one /v1/completions request
    owned_by: str = "tuneship"
    # served id of each adapter -> its engine adapter name (follow.py: `name/version`,
    # `name@alias`, `name`); replaced whole when the registry moves
    names: dict[str, str] = field(default_factory=dict)

    def resolve(self, model: str) -> str | None:
        """The engine adapter a `model` id names (None = the base); UnknownAdapter otherwise."""
        if model == self.model_id or model in self.aliases:
            return None
        adapter = self.names.get(model, model)
        if adapter in self.engine.adapters:
            return adapter
        raise UnknownAdapter(f"The model '{model}' does not exist (served: "
                             f"{', '.join(self.model_ids())})")

    def model_ids(self) -> list[str]:
        loaded = self.engine.adapters
        named = {m for m, adapter in self.names.items() if adapter in loaded}
        unnamed = set(loaded) - set(self.names.values())
        return [self.model_id, *sorted(named | unnamed)]

    def cards(self) -> list[dict[str, Any]]:
        """The card of every served id; an adapter the registry follower unloads meanwhile (in
        its own thread) is left out rather than failing the listing."""
        found = []
        for model in self.model_ids():
            with contextlib.suppress(UnknownAdapter):
                found.append(self.card(model))
        return found

    def card(self, model: str) -> dict[str, Any]:
        adapter = self.resolve(model)
        root = self.model_id if adapter is None else next(
            (m for m, a in self.names.items() if a == adapter and "/" in m), adapter)
        return {"id": model, "object": "model", "created": self.created,
                "owned_by": self.owned_by, "root": root,
                "parent": None if adapter is None else self.model_id,
                "max_model_len": self.engine.max_model_len}


# --- request bodies ---------------------------------------------------------------------------

Stop = Annotated[StrictStr, Field(min_length=1, max_length=STOP_CHARS)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None  # OpenAI's padding field: nothing to hide here


class Common(BaseModel):
    """Parameters both routes share (OpenAI's names, types and ranges)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: StrictFloat = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: Stop | list[Stop] | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: StrictFloat = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: StrictFloat = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    user: StrictStr | None = None
    # Known OpenAI parameters this server does not implement: accepted at their defaults only.
    logprobs: Any = None
    logit_bias: dict[str, Any] | None = None
    service_tier: Any = None


class CompletionBody(Common):
    prompt: StrictStr | list[StrictStr] | list[StrictInt]
    echo: StrictBool = False
    suffix: Any = None
    best_of: Any = None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[dict[str, Any]]
    name: StrictStr | None = None


class ChatBody(Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    store: Any = None
    metadata: Any = None
    web_search_options: Any = None
    verbosity: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None


# Unsupported parameters and the values that mean "not used" (those pass).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False), "logit_bias": (None, {}), "service_tier": (None, "auto", "default"),
    "echo": (False,), "suffix": (None, ""), "best_of": (None, 1), "top_logprobs": (None, 0),
    "tools": (None, []), "tool_choice": (None, "none"), "parallel_tool_calls": (None,),
    "functions": (None, []), "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}), "modalities": (None, ["text"]), "audio": (None,),
    "prediction": (None,), "reasoning_effort": (None,), "store": (None, False),
    "metadata": (None, {}), "web_search_options": (None,), "verbosity": (None,),
    "prompt_cache_key": (None,), "safety_identifier": (None,)}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param, err.code),
                        status_code=err.status, headers=err.headers)


# --- turning a body into engine requests --------------------------------------------------------


@dataclass
class Job:
    """A validated request: engine requests (prompt-major, `n` per prompt) and the reply's frame."""

    kind: Literal["completion", "chat"]
    model: str
    requests: list[Request]
    prompt_tokens: int
    stream: bool
    include_usage: bool
    id: str
    created: int = field(default_factory=lambda: int(time.time()))


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object")
    try:
        body = model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not _is_type_tag(p)) or None
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param,
                       "invalid_value" if first["type"] != "extra_forbidden"
                       else "unknown_parameter") from None
    for name, allowed in UNSUPPORTED.items():
        if name in body.model_fields_set and getattr(body, name) not in allowed:
            raise APIError(400, f"'{name}' is not supported by this server (leave it out)",
                           name, "unsupported_parameter")
    return body


def _is_type_tag(part: object) -> bool:
    """A union member's name in a pydantic error location (`str`, `list[constrained-str]`)."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "list", "dict"}
                                      or "[" in part or part.startswith("constrained"))


def _sampling(served: ServedModel, body: Common, max_tokens: int | None, prompt_len: int,
              index: int) -> SamplingParams:
    limit = served.max_tokens_limit
    if max_tokens is not None and max_tokens > limit:
        raise APIError(400, f"max_tokens is {max_tokens}; this server generates at most {limit} "
                       f"tokens per request", "max_tokens", "invalid_value")
    if max_tokens is None:  # the model's default, within what the context leaves
        room = served.engine.max_model_len - prompt_len
        max_tokens = max(1, min(served.default_max_tokens, room))
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > served.max_stop:
        raise APIError(400, f"stop: at most {served.max_stop} stop strings (got {len(stop)})",
                       "stop", "invalid_value")
    seed = None if body.seed is None else (body.seed + index) % 2**63  # n choices differ
    return SamplingParams(max_tokens=max_tokens, temperature=float(body.temperature),
                          top_p=float(body.top_p), seed=seed, stop=stop,
                          repetition_penalty=served.repetition_penalty,
                          presence_penalty=float(body.presence_penalty),
                          frequency_penalty=float(body.frequency_penalty))


def _check_n(served: ServedModel, body: Common) -> None:
    if body.n > served.max_n:
        raise APIError(400, f"n: at most {served.max_n} choices per request (got {body.n})", "n",
                       "invalid_value")


def _chat_text(messages: list[Message]) -> list[dict[str, str]]:
    turns = []
    for i, message in enumerate(messages):
        if isinstance(message.content, str):
            content = message.content
        else:
            parts = []
            for part in message.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, f"messages.{i}.content: only text parts are supported",
                                   f"messages.{i}.content", "unsupported_content")
                parts.append(part["text"])
            content = "".join(parts)
        role = "system" if message.role == "developer" else message.role
        turns.append({"role": role, "content": content})
    return turns


def _prompt_ids(served: ServedModel, text: str) -> list[int]:
    return served.tokenizer(text)["input_ids"]


def _requests(served: ServedModel, adapter: str | None, body: Common, prompts: list[list[int]],
              max_tokens: int | None) -> list[Request]:
    requests = []
    for ids in prompts:
        for j in range(body.n):
            params = _sampling(served, body, max_tokens, len(ids), j)
            request = Request(ids, params, adapter)
            try:
                served.engine.check(request)
            except InvalidRequest as err:
                raise APIError(400, str(err), err.param or "max_tokens",
                               "context_length_exceeded") from None
            requests.append(request)
    return requests


def completion_job(served: ServedModel, raw: bytes) -> Job:
    body: CompletionBody = _parse(CompletionBody, raw)
    adapter = _resolve(served, body.model)
    _check_n(served, body)
    if isinstance(body.prompt, str):
        prompts = [_prompt_ids(served, body.prompt)]
    elif body.prompt and all(isinstance(x, int) for x in body.prompt):
        vocab = len(served.tokenizer)
        if any(not 0 <= x < vocab for x in body.prompt):
            raise APIError(400, f"prompt: token ids must be in [0, {vocab})", "prompt")
        prompts = [list(body.prompt)]
    else:
        if not 1 <= len(body.prompt) <= served.max_prompts:
            raise APIError(400, f"prompt: 1 to {served.max_prompts} prompts per request (got "
                           f"{len(body.prompt)})", "prompt", "invalid_value")
        prompts = [_prompt_ids(served, p) for p in body.prompt]
    if any(not ids for ids in prompts):
        raise APIError(400, "prompt: the prompt is empty (0 tokens)", "prompt", "invalid_value")
    requests = _requests(served, adapter, body, prompts, body.max_tokens)
    return Job("completion", body.model, requests, sum(len(p) for p in prompts), body.stream,
               bool(body.stream_options and body.stream_options.include_usage),
               f"cmpl-{uuid.uuid4().hex}")


def chat_job(served: ServedModel, raw: bytes) -> Job:
    body: ChatBody = _parse(ChatBody, raw)
    adapter = _resolve(served, body.model)
    _check_n(served, body)
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise APIError(400, "max_tokens and max_completion_tokens differ: send one of them",
                       "max_completion_tokens", "invalid_value")
    if not getattr(served.tokenizer, "chat_template", None):
        raise APIError(400, f"the model '{body.model}' has no chat template: use "
                       f"/v1/completions", "messages", "unsupported_model")
    try:
        ids = served.tokenizer.apply_chat_template(_chat_text(body.messages),
                                                   add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
    except Exception as err:  # jinja raises for conversations the template refuses
        raise APIError(400, f"messages: the chat template refused them: {err}", "messages",
                       "invalid_value") from None
    if hasattr(ids, "input_ids"):  # a BatchEncoding
        ids = ids["input_ids"]
    requests = _requests(served, adapter, body, [list(ids)],
                         body.max_completion_tokens or body.max_tokens)
    return Job("chat", body.model, requests, len(ids), body.stream,
               bool(body.stream_options and body.stream_options.include_usage),
               f"chatcmpl-{uuid.uuid4().hex}")


def _resolve(served: ServedModel, model: str) -> str | None:
    try:
        return served.resolve(model)
    except UnknownAdapter as err:
        raise APIError(404, str(err), "model", "model_not_found") from None


# --- running a job ------------------------------------------------------------------------------


def _submit(served: ServedModel, job: Job) -> list[Any]:
    try:
        return served.engine.submit_many(job.requests)
    except EngineFull as err:
        raise APIError(429, str(err), None, "server_busy",
                       {"retry-after": str(err.retry_after_s)}) from None
    except EngineStopped as err:
        raise APIError(503, str(err), None, "unavailable", {"retry-after": "1"}) from None
    except UnknownAdapter as err:  # removed between resolving and submitting
        raise APIError(404, str(err), "model", "model_not_found") from None


async def _merged(streams: list[Any]) -> AsyncIterator[tuple[int, Delta]]:
    """Deltas of several streams as they come, tagged with the stream's index."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, Delta | None]] = asyncio.Queue()

    async def pump(i: int, stream: Any) -> None:
        async for delta in stream:
            await queue.put((i, delta))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, delta = await queue.get()
            if delta is None:
                left -= 1
            else:
                yield i, delta
    finally:
        for task in tasks:
            task.cancel()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _frame(job: Job, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
    kind = {("completion", False): "text_completion", ("completion", True): "text_completion",
            ("chat", False): "chat.completion", ("chat", True): "chat.completion.chunk"}
    return {"id": job.id, "object": kind[job.kind, chunk], "created": job.created,
            "model": job.model, "system_fingerprint": None, "choices": choices}


def _finish(reason: str | None, error: str | None) -> str | None:
    if reason == "error":
        raise APIError(500, f"generation failed: {error}", None, "generation_failed")
    return reason


async def respond(job: Job, streams: list[Any]) -> dict[str, Any]:
    """The whole answer (non-streaming)."""
    texts = [""] * len(streams)
    reasons: list[str | None] = [None] * len(streams)
    completion = 0
    try:
        async for i, delta in _merged(streams):
            texts[i] += delta.text
            if delta.finish_reason is not None:
                reasons[i] = _finish(delta.finish_reason, delta.error)
                completion += delta.completion_tokens
    finally:
        for stream in streams:
            stream.cancel()  # no-op for finished ones; frees the rest if the client left
    if job.kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": text,
                                            "refusal": None}, "logprobs": None,
                    "finish_reason": reasons[i]} for i, text in enumerate(texts)]
    else:
        choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": reasons[i]}
                   for i, text in enumerate(texts)]
    return {**_frame(job, choices, chunk=False), "usage": _usage(job.prompt_tokens, completion)}


async def stream_events(job: Job, streams: list[Any]) -> AsyncIterator[str]:
    """Server-sent events: chunks as text arrives, the finish reasons, usage, [DONE]."""
    completion = 0
    usage_field = {"usage": None} if job.include_usage else {}
    try:
        if job.kind == "chat":  # the role first, as OpenAI does
            first = [{"index": i, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None} for i in range(len(streams))]
            yield _event({**_frame(job, first, chunk=True), **usage_field})
        async for i, delta in _merged(streams):
            try:
                reason = _finish(delta.finish_reason, delta.error)
            except APIError as err:
                yield _event(error_body(err.status, err.message, err.param, err.code))
                return
            if delta.finish_reason is not None:
                completion += delta.completion_tokens
            if not delta.text and reason is None:
                continue
            if job.kind == "chat":
                choice = {"index": i, "delta": {"content": delta.text} if delta.text else {},
                          "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": i, "text": delta.text, "logprobs": None,
                          "finish_reason": reason}
            yield _event({**_frame(job, [choice], chunk=True), **usage_field})
        if job.include_usage:
            yield _event({**_frame(job, [], chunk=True),
                          "usage": _usage(job.prompt_tokens, completion)})
        yield "data: [DONE]\n\n"
    finally:
        for stream in streams:
            stream.cancel()  # the client hung up (or we are done): free the places


async def cancel_on_disconnect(request: HTTPRequest, streams: list[Any]) -> None:
    """Cancel the streams if the client hangs up before a (non-streamed) answer is ready."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for stream in streams:
                stream.cancel()
            return


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


# --- the app ----------------------------------------------------------------------------------


def _served(request: HTTPRequest) -> ServedModel:
    served = getattr(request.app.state, "llm", None)
    if served is None:
        raise APIError(503, "the model is still loading; retry later", None, "loading",
                       {"retry-after": "1"})
    return served


def _endpoint(make_job: Callable[[ServedModel, bytes], Job]):
    async def endpoint(request: HTTPRequest) -> Response:
        try:
            served = _served(request)
            job = make_job(served, await request.body())
            streams = _submit(served, job)
            if job.stream:
                return StreamingResponse(stream_events(job, streams),
                                         media_type="text/event-stream",
                                         headers={"cache-control": "no-cache"})
            watcher = asyncio.create_task(cancel_on_disconnect(request, streams))
            try:
                return JSONResponse(await respond(job, streams))
            finally:
                watcher.cancel()
        except APIError as err:
            if err.status >= 500:
                log.error("%s %s: %s", request.method, request.url.path, err.message)
            return error_response(err)

    return endpoint


async def list_models(request: HTTPRequest) -> Response:
    try:
        served = _served(request)
    except APIError as err:
        return error_response(err)
    return JSONResponse({"object": "list", "data": served.cards()})


async def get_model(request: HTTPRequest) -> Response:
    try:
        served = _served(request)
        model = request.path_params["model"]
        _resolve(served, model)
        return JSONResponse(served.card(model))
    except APIError as err:
        return error_response(err)


def build_app() -> Starlette:
    """The `/v1` app; set `app.state.llm` to a ServedModel once the model is loaded."""
    app = Starlette(routes=[
        Route("/models", list_models, methods=["GET"]),
        Route("/models/{model:path}", get_model, methods=["GET"]),
        Route("/completions", _endpoint(completion_job), methods=["POST"]),
        Route("/chat/completions", _endpoint(chat_job), methods=["POST"]),
    ])
    app.state.llm = None
    return app
