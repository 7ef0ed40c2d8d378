"""Tuneship text generation, served by BentoML 1.4: an OpenAI-compatible LLM service.

`make bento experiment=shakespeare_lora` (or `smoke_lm`) builds it from this module (the
classification bento uses `service.py`). One service, `TuneshipLM`, on port 3000, over one
continuous-batching engine (engine.py): concurrent requests share forward passes, each may
name a LoRA adapter.

- `/v1/models`, `/v1/completions`, `/v1/chat/completions`: the OpenAI API (openai_api.py).
- `POST /generate`, `POST /generate_stream`: the earlier JSON API (`prompt`, `max_new_tokens`,
  `temperature`, `top_p`, `stop`, `seed` -> text, finish reason, token counts), now thin aliases
  over the same engine.
- `GET /model` (served models, versions, metrics, lineage, engine limits and load), `/healthz`,
  `/readyz`, `/metrics` (BentoML's plus the `tuneship_llm_*` series named like vLLM's).

The base model is the BentoML store model the bento names (`stored_card`,
`metadata["transformers"]`); LoRA adapters come from TUNESHIP_LLM_ADAPTERS (`name=folder` or
`name=bento-model-tag`, comma-separated) and, at run time, `Engine.add_adapter`. The same guards
as `/classify` (guards.py: API key, JSON only, body limit; OpenAI-shaped errors on /v1).
Engine settings (environment; a bento argument of the same name wins once ServeArgs has it):

| Variable | Default | Effect |
|---|---|---|
| TUNESHIP_LLM_KV_BUDGET | 8192 (CPU), 65536 (GPU) | KV tokens the batch may reach (rows x longest) |
| TUNESHIP_LLM_MAX_BATCH | 32 (CPU), 64 (GPU) | requests decoded together |
| TUNESHIP_LLM_MAX_QUEUE | 64 | requests waiting; beyond: 429 (/v1) or 503 (/generate) + Retry-After |
| TUNESHIP_LLM_ADAPTERS | none | LoRA adapters to serve |
| TUNESHIP_LLM_DTYPE | the registered dtype (CPU), bfloat16 (GPU) | weights and activations |
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import openai_api
from common import ModelRef, device, load_args, stored_card, torch_threads
from engine import Engine, EngineFull, InvalidRequest, Observer, Request, SamplingParams
from guards import Guard
from prometheus_client import Counter, Gauge, Histogram
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("tuneship.generation")
ARGS, MODEL_TAG = load_args()
STOP_CHARS = 64

# --- metrics (named like vLLM's; label model_name = the base model or the adapter asked for) --

LABEL = ["model_name"]
TTFT = Histogram("tuneship_llm_time_to_first_token_seconds",
                 "Time from a request's arrival to its first generated token", LABEL,
                 buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                          2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0))
ITL = Histogram("tuneship_llm_inter_token_latency_seconds",
                "Time between two generated tokens of one request", LABEL,
                buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                         5.0, 10.0, 20.0, 40.0, 80.0))
E2E = Histogram("tuneship_llm_e2e_request_latency_seconds",
                "Time from a request's arrival to its last token", LABEL,
                buckets=(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                         50.0, 60.0, 120.0, 240.0, 480.0, 960.0))
RUNNING = Gauge("tuneship_llm_num_requests_running", "Requests in the running batch", LABEL,
                multiprocess_mode="livesum")
WAITING = Gauge("tuneship_llm_num_requests_waiting", "Requests waiting for a place (the HPA "
                "scales on this)", LABEL, multiprocess_mode="livesum")
PROMPT_TOKENS = Counter("tuneship_llm_prompt_tokens", "Prompt tokens read", LABEL)
GENERATION_TOKENS = Counter("tuneship_llm_generation_tokens", "Tokens generated", LABEL)
FINISHED = Counter("tuneship_llm_requests", "Requests finished, by reason "
                   "(stop, length, cancelled, error)", [*LABEL, "finish_reason"])


class Metrics(Observer):
    """The engine's callbacks into Prometheus (called from the engine thread)."""

    def __init__(self, base: str) -> None:
        self.base = base
        for gauge in (RUNNING, WAITING):
            gauge.labels(model_name=base).set(0)

    def first_token(self, model: str, seconds: float) -> None:
        TTFT.labels(model_name=model).observe(seconds)

    def inter_token(self, model: str, seconds: float) -> None:
        ITL.labels(model_name=model).observe(seconds)

    def finished(self, model: str, reason: str, seconds: float, prompt_tokens: int,
                 completion_tokens: int) -> None:
        FINISHED.labels(model_name=model, finish_reason=reason).inc()
        PROMPT_TOKENS.labels(model_name=model).inc(prompt_tokens)
        GENERATION_TOKENS.labels(model_name=model).inc(completion_tokens)
        if reason in ("stop", "length"):
            E2E.labels(model_name=model).observe(seconds)

    def load(self, running: int, waiting: int) -> None:
        RUNNING.labels(model_name=self.base).set(running)
        WAITING.labels(model_name=self.base).set(waiting)


# --- engine settings ---------------------------------------------------------------------------


def setting(name: str, default: Any, cast: type = int) -> Any:
    """A bento argument (once ServeArgs has it), else TUNESHIP_LLM_<NAME>, else `default`."""
    env = os.environ.get(f"TUNESHIP_LLM_{name.upper()}")
    if env:
        return cast(env)
    value = getattr(ARGS, f"llm_{name}", None)
    return default if value is None else value


def adapter_sources(spec: str) -> dict[str, str]:
    """`name=folder-or-bento-tag,...` (a bare entry is named after its folder or model)."""
    sources = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, where = item.rpartition("=")
        sources[name or Path(where).name.split(":")[0]] = where
    return sources


def adapter_folder(where: str) -> str:
    """A folder holding adapter_config.json: the folder itself, or inside a BentoML model."""
    path = Path(where)
    if not path.is_dir():
        path = Path(bentoml.models.get(where).path)
    if (path / "adapter_config.json").is_file():
        return str(path)
    found = sorted(path.rglob("adapter_config.json"))
    if not found:
        raise RuntimeError(f"no LoRA adapter (adapter_config.json) in {where}")
    return str(found[0].parent)


# --- the /generate request ----------------------------------------------------------------------

Prompt = Annotated[StrictStr, StringConstraints(min_length=1, max_length=ARGS.max_prompt_chars)]
Stop = Annotated[StrictStr, StringConstraints(min_length=1, max_length=STOP_CHARS)]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(description=f"1 to {ARGS.max_prompt_chars} characters",
                           examples=["ROMEO:\nBut soft, what light"])
    max_new_tokens: StrictInt | None = Field(
        None, ge=1, le=ARGS.max_new_tokens,
        description=f"tokens to generate at most (1 to {ARGS.max_new_tokens}; default: the "
                    f"registered model's)")
    temperature: StrictFloat = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False,
                                     description="0 = greedy; above 0 samples")
    top_p: StrictFloat = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False,
                               description="nucleus sampling mass (with temperature > 0)")
    stop: list[Stop] = Field(default_factory=list, max_length=ARGS.max_stop,
                             description=f"up to {ARGS.max_stop} strings that end the text "
                                         f"(not included in it)")
    seed: StrictInt | None = Field(None, ge=0, le=2**32 - 1,
                                   description="makes sampling repeatable")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    model: ModelRef


# --- the model card -----------------------------------------------------------------------------


@functools.cache
def model_card() -> dict[str, Any]:
    """What `GET /model` shows: the served version, its metrics, lineage and generation limits."""
    stored = bentoml.models.get(MODEL_TAG)
    meta = stored.info.metadata
    config = json.loads(Path(stored.path_of(meta["transformers"]["model"]), "config.json")
                        .read_text())
    defaults = meta.get("generation", {})
    return {**stored_card(MODEL_TAG, ARGS.alias),
            "generation": {"defaults": defaults, "max_new_tokens": ARGS.max_new_tokens,
                           "max_prompt_chars": ARGS.max_prompt_chars, "max_stop": ARGS.max_stop,
                           "context_tokens": config.get("max_position_embeddings"),
                           "chat_template": bool(meta.get("prompt_template"))}}


def _service(request: HTTPRequest) -> TuneshipLM:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise RuntimeError("the model is not loaded yet")
    return service


async def model_endpoint(request: HTTPRequest) -> JSONResponse:
    card = dict(model_card())
    service = getattr(request.app.state, "service", None)
    if service is not None:
        served = service.served
        card["served"] = {"models": [served.card(m) for m in served.model_ids()],
                          "adapters": dict(service.engine.adapters),
                          "engine": service.engine.stats()}
    return JSONResponse(card)


def _bad_request(err: ValidationError) -> JSONResponse:
    first = err.errors(include_url=False, include_context=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return JSONResponse({"error": f"{where}: {first['msg']}" if where else first["msg"],
                         "detail": err.errors(include_url=False, include_context=False,
                                              include_input=False)}, status_code=400)


async def _generate_job(request: HTTPRequest) -> tuple[TuneshipLM, Request] | Response:
    try:
        body = GenerateRequest.model_validate_json(await request.body())
    except ValidationError as err:
        return _bad_request(err)
    service = _service(request)
    try:
        return service, service.prepare(body)
    except InvalidRequest as err:
        return JSONResponse({"error": str(err)}, status_code=400)


def _busy(err: EngineFull) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=503,
                        headers={"retry-after": str(err.retry_after_s)})


async def _submitted(request: HTTPRequest):
    """The request's generation submitted to the engine, or the 4xx/503 answer instead."""
    prepared = await _generate_job(request)
    if isinstance(prepared, Response):
        return prepared
    service, job = prepared
    try:
        return service.engine.submit(job)
    except EngineFull as err:
        return _busy(err)


async def generate_endpoint(request: HTTPRequest) -> Response:
    """`POST /generate`: the whole text, why it ended, token counts, which model answered."""
    stream = await _submitted(request)
    if isinstance(stream, Response):
        return stream
    watcher = asyncio.create_task(openai_api.cancel_on_disconnect(request, [stream]))
    try:
        result = await stream.collect()
    finally:
        watcher.cancel()
        stream.cancel()
    if result.finish_reason == "error":
        return JSONResponse({"error": f"generation failed: {result.error}"}, status_code=500)
    card = model_card()
    return JSONResponse(GenerateResponse(
        text=result.text, finish_reason=result.finish_reason,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    total_tokens=result.prompt_tokens + result.completion_tokens),
        model=ModelRef(name=card["name"], version=card["version"], alias=card["alias"],
                       bento_model=card["bento_model"])).model_dump())


async def generate_stream_endpoint(request: HTTPRequest) -> Response:
    """`POST /generate_stream`: the same text as plain text, sent as it is produced."""
    stream = await _submitted(request)
    if isinstance(stream, Response):
        return stream

    async def pieces() -> AsyncIterator[str]:
        try:
            async for delta in stream:
                if delta.text:
                    yield delta.text
        finally:
            stream.cancel()  # the client left mid-stream: free its place at the next step

    return StreamingResponse(pieces(), media_type="text/plain; charset=utf-8")


routes = Starlette(routes=[
    Route("/model", model_endpoint, methods=["GET"]),
    Route("/generate", generate_endpoint, methods=["POST"]),
    Route("/generate_stream", generate_stream_endpoint, methods=["POST"]),
])
routes.state.service = None
openai_app = openai_api.build_app()


@bentoml.service(traffic={"timeout": 300})
@bentoml.asgi_app(routes, path="/")
@bentoml.asgi_app(openai_app, path="/v1")  # mounted first: "/" would match /v1 paths too
class TuneshipLM:
    """The causal LM, its tokenizer, adapters and the continuous-batching engine."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        stored = self.bento_model
        meta = stored.info.metadata
        files = meta["transformers"]
        self.device = device()
        gpu = self.device == "cuda"
        dtype_name = os.environ.get("TUNESHIP_LLM_DTYPE") or (
            "bfloat16" if gpu else files["torch_dtype"])
        dtype = getattr(torch, dtype_name)
        self.tokenizer = AutoTokenizer.from_pretrained(stored.path_of(files["tokenizer"]))
        model = AutoModelForCausalLM.from_pretrained(
            stored.path_of(files["model"]), dtype=dtype, use_safetensors=True)
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.template: str | None = meta.get("prompt_template")
        self.defaults = meta.get("generation", {})
        card = model_card()
        adapters = {name: adapter_folder(where) for name, where in
                    adapter_sources(setting("adapters", "", str)).items()}
        self.engine = Engine(
            model, self.tokenizer, adapters, device=self.device, dtype=dtype,
            kv_budget_tokens=setting("kv_budget", 65536 if gpu else 8192),
            max_batch=setting("max_batch", 64 if gpu else 32),
            max_queue=setting("max_queue", 64),
            threads=None if gpu else torch_threads(),  # one process: HTTP is mostly idle
            max_model_len=self.context, adapter_mode=setting("adapter_mode", "mixed", str),
            observer=Metrics(card["name"]), model_name=card["name"])
        self.default_new = min(ARGS.max_new_tokens, int(self.defaults.get("max_new_tokens", 64)))
        self.served = openai_api.ServedModel(
            engine=self.engine, tokenizer=self.tokenizer, model_id=card["name"],
            aliases=frozenset({card["bento_model"], f"{card['name']}@{card['alias']}",
                               f"{card['name']}:{card['version']}"}),
            max_tokens_limit=ARGS.max_new_tokens, default_max_tokens=self.default_new,
            repetition_penalty=float(self.defaults.get("repetition_penalty", 1.0)),
            max_stop=ARGS.max_stop)
        self.engine.generate(Request(self.tokenizer("Hello")["input_ids"] or [0],
                                     SamplingParams(max_tokens=2)), timeout=120)  # warm-up
        routes.state.service = self
        openai_app.state.llm = self.served
        log.info("loaded %s on %s (%s, %d torch threads, context %d tokens, adapters %s; engine "
                 "%s)", stored.tag, self.device, dtype_name, torch.get_num_threads(),
                 self.context, sorted(adapters) or "none", self.engine.stats())

    def prepare(self, body: GenerateRequest) -> Request:
        """A /generate body as an engine request; InvalidRequest (400) if it cannot run."""
        text = self.template.format(prompt=body.prompt) if self.template else body.prompt
        ids = self.tokenizer(text, add_special_tokens=self.template is None)["input_ids"]
        new = body.max_new_tokens or self.default_new
        if len(ids) + new > self.context:
            raise InvalidRequest(
                f"prompt is {len(ids)} tokens; with max_new_tokens={new} that exceeds the "
                f"model's context of {self.context} tokens: shorten the prompt or ask for fewer",
                "max_new_tokens")
        sampled = body.temperature > 0
        return Request(ids, SamplingParams(
            max_tokens=new, temperature=body.temperature, top_p=body.top_p if sampled else 1.0,
            seed=body.seed, stop=tuple(body.stop),
            repetition_penalty=float(self.defaults.get("repetition_penalty", 1.0))))

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.close()


TuneshipLM.add_asgi_middleware(Guard, api_key=os.environ.get("TUNESHIP_API_KEY") or None,
                               max_body_bytes=ARGS.max_request_bytes)
