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

The bento names one base model (`model_tag`) and the LoRA adapters of it that `make bento`
resolved from the registry (`llm_adapters`, `llm_aliases`; follow.py gives their served ids:
`name`, `name@alias`, `name/version`). With a reachable registry the service follows the same
references at run time (`POST /admin/reload` with the API key, or every `llm_registry_poll_s`
seconds). TUNESHIP_LLM_ADAPTERS (`name=folder` or `name=bento-model-tag`, comma-separated) adds
local adapters. The same guards as `/classify` (guards.py: API key, JSON only, body limit;
OpenAI-shaped errors on /v1). Engine settings are the `llm_*` bento arguments (conf/serve/); a
TUNESHIP_LLM_<NAME> environment variable overrides one at serve time (tests, benchmarks):
KV_BUDGET, MAX_BATCH, MAX_QUEUE, ADAPTER_MODE, REGISTRY_POLL_S, DTYPE (`llm_dtype`: auto,
float32, bfloat16 or int8 weight-only; auto = bfloat16 on a GPU, on a CPU the candidate that
decodes fastest at 1 and 16 rows, timed at start, if faster than float32 at both
(engine.choose_dtype); never a dtype that failed parity where the model carries the optimize
stage's runtimes/manifest.json, and int8 only where it passed there; `/model` and the
`tuneship_llm_dtype_info` metric say which and why).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import follow
import openai_api
import platform_mode
from common import ModelRef, device, load_args, release_free_memory, stored_card, torch_threads
from engine import (
    Engine,
    EngineFull,
    InvalidRequest,
    Observer,
    Request,
    SamplingParams,
    choose_dtype,
    manifest_verdicts,
)
from guards import Guard
from inference_log import InferenceLog, feedback_endpoint
from inference_log import options as log_options
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
DTYPE_INFO = Gauge("tuneship_llm_dtype_info", "1 for the precision the base model's weights are "
                   "served in, and how it was chosen", ["dtype", "chosen_by"],
                   multiprocess_mode="livemax")
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
    """TUNESHIP_LLM_<NAME> (serve time), else the bento argument `llm_<name>`, else `default`."""
    env = os.environ.get(f"TUNESHIP_LLM_{name.upper()}")
    if env:
        return cast(env)
    value = getattr(ARGS, f"llm_{name}", None)
    return default if value is None else value


def registry_uri() -> str | None:
    """Where the service follows the registry: MLFLOW_TRACKING_URI, else the bento's."""
    return os.environ.get("MLFLOW_TRACKING_URI") or ARGS.llm_registry_uri


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
def base_card() -> dict[str, Any]:
    """The served base model: registry version, metrics, lineage, context length."""
    stored = bentoml.models.get(MODEL_TAG)
    meta = stored.info.metadata
    config = json.loads(Path(stored.path_of(meta["transformers"]["model"]), "config.json")
                        .read_text())
    return {**stored_card(MODEL_TAG, ARGS.alias), "sha256": meta.get("sha256"),
            "context_tokens": config.get("max_position_embeddings")}


@functools.cache
def primary() -> tuple[str | None, dict[str, Any]]:
    """The adapter `/generate` serves (the one holding the served alias) and the metadata whose
    generation defaults and prompt template apply: its own, else the base's (a merged model)."""
    for ref, key in sorted(ARGS.llm_aliases.items()):
        if ref.rpartition("@")[2] == ARGS.alias and key in ARGS.llm_adapters:
            return key, bentoml.models.get(ARGS.llm_adapters[key]).info.metadata
    return None, bentoml.models.get(MODEL_TAG).info.metadata


def runtime_folders(adapter_key: str | None) -> list[Path]:
    """Where the optimize stage's runtimes/ may sit: the served adapter's model, then the base's."""
    tags = ([ARGS.llm_adapters[adapter_key]] if adapter_key is not None else []) + [MODEL_TAG]
    return [Path(bentoml.models.get(tag).path) for tag in tags]


def model_card() -> dict[str, Any]:
    """What `GET /model` shows first: the model `/generate` answers with, and the limits."""
    key, meta = primary()
    card = base_card()
    if key is not None:
        card = {**stored_card(ARGS.llm_adapters[key], ARGS.alias), "base": card}
    return {**card, "generation": {
        "defaults": meta.get("generation", {}), "max_new_tokens": ARGS.max_new_tokens,
        "max_prompt_chars": ARGS.max_prompt_chars, "max_stop": ARGS.max_stop,
        "context_tokens": base_card()["context_tokens"],
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
        card["served"] = {"models": served.cards(),
                          "registered": dict(service.follower.cards),
                          "skipped": dict(service.follower.skipped),
                          "dtype": service.dtype_choice.card(),
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


async def reload_endpoint(request: HTTPRequest) -> Response:
    """`POST /admin/reload`: follow the registry now (new adapter versions, moved aliases).

    Only with an API key configured (the guard checks it): it starts downloads and loads."""
    if not os.environ.get("TUNESHIP_API_KEY"):
        return JSONResponse({"error": "admin routes are off: start the service with "
                                      "TUNESHIP_API_KEY set and send that key"}, status_code=403)
    service = getattr(request.app.state, "service", None)
    if service is None:
        return JSONResponse({"error": "the model is not loaded yet"}, status_code=503)
    try:
        return JSONResponse(await asyncio.to_thread(service.follower.reload))
    except RuntimeError as err:
        return JSONResponse({"error": str(err)}, status_code=409)


routes = Starlette(routes=[
    Route("/model", model_endpoint, methods=["GET"]),
    Route("/admin/reload", reload_endpoint, methods=["POST"]),
    Route("/generate", generate_endpoint, methods=["POST"]),
    Route("/generate_stream", generate_stream_endpoint, methods=["POST"]),
    Route("/feedback", feedback_endpoint, methods=["POST"]),
])
routes.state.service = None
openai_app = openai_api.build_app()
upload_limit = platform_mode.mount(openai_app)  # jobs API on /v1 in platform mode, else None


@bentoml.service(traffic={"timeout": 300})
@bentoml.asgi_app(routes, path="/")
@bentoml.asgi_app(openai_app, path="/v1")  # mounted first: "/" would match /v1 paths too
class TuneshipLM:
    """The causal LM, its tokenizer, adapters and the continuous-batching engine."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch

        stored = self.bento_model
        # The model is loaded, timed and handed to the engine in a thread that then ends: every
        # thread that ran a parallel torch op keeps an OpenMP team, and while another team's
        # thread lives the engine thread's small decode GEMMs run markedly slower
        # (bentos/README.md, "Threads matter more than the kernel at one row").
        with ThreadPoolExecutor(1, thread_name_prefix="tuneship-load") as pool:
            base, local, dtype_name = pool.submit(self._start_engine, stored).result()
        self.default_new = min(ARGS.max_new_tokens, int(self.defaults.get("max_new_tokens", 64)))
        fixed = {name: name for name in local}
        self.served = openai_api.ServedModel(
            engine=self.engine, tokenizer=self.tokenizer, model_id=base["name"],
            aliases=frozenset({base["bento_model"], f"{base['name']}/{base['version']}"}),
            max_tokens_limit=ARGS.max_new_tokens, default_max_tokens=self.default_new,
            repetition_penalty=float(self.defaults.get("repetition_penalty", 1.0)),
            max_stop=ARGS.max_stop,
            names={**fixed, **follow.served_names(ARGS.llm_aliases, list(ARGS.llm_adapters),
                                                  ARGS.alias)})
        self.follower = platform_mode.follower_class()(
            self.served, platform_mode.follow_refs(ARGS.llm_follow), base.get("sha256"), ARGS.alias,
            registry_uri(),
            Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "tuneship-adapters",
            cards={k: stored_card(tag, ARGS.alias) for k, tag in ARGS.llm_adapters.items()},
            fixed=fixed)
        self.engine.generate(Request(self.tokenizer("Hello")["input_ids"] or [0],
                                     SamplingParams(max_tokens=2)), timeout=120)  # warm-up
        release_free_memory()  # what loading and the dtype/layout timing left behind
        poll = platform_mode.poll_s(setting("registry_poll_s", 0.0, float))
        if poll > 0 and self.follower.refs:
            self.follower.poll(poll)
        routes.state.service = self
        openai_app.state.llm = self.served
        log.info("loaded %s on %s (%s, %d torch threads, context %d tokens, adapters %s, "
                 "following %s every %ss; engine %s)", stored.tag, self.device, dtype_name,
                 torch.get_num_threads(), self.context, self.served.model_ids()[1:] or "none",
                 self.follower.refs or "nothing", poll or "-", self.engine.stats())

    def _start_engine(self, stored: Any) -> tuple[dict[str, Any], dict[str, str], str]:
        """Load the model, choose its dtype and start the engine (in a short-lived thread)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        files = stored.info.metadata["transformers"]
        self.device = device()
        gpu = self.device == "cuda"
        self.tokenizer = AutoTokenizer.from_pretrained(stored.path_of(files["tokenizer"]))
        model = AutoModelForCausalLM.from_pretrained(
            stored.path_of(files["model"]), dtype=torch.float32, use_safetensors=True).eval()
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        key, meta = primary()
        if not gpu:
            torch.set_num_threads(torch_threads())  # the engine's threads, for the timing
        local = adapter_sources(os.environ.get("TUNESHIP_LLM_ADAPTERS", ""))
        adapters = {name: adapter_folder(where) for name, where in local.items()}
        adapters |= {follow.engine_name(k): adapter_folder(tag)
                     for k, tag in ARGS.llm_adapters.items()}
        model, self.dtype_choice = choose_dtype(
            model, setting("dtype", ARGS.llm_dtype, str), self.device,
            manifest_verdicts(runtime_folders(key)),
            adapters=bool(adapters or platform_mode.follow_refs(ARGS.llm_follow)))
        dtype_name = self.dtype_choice.dtype
        DTYPE_INFO.labels(dtype=dtype_name, chosen_by=self.dtype_choice.chosen_by).set(1)
        self.adapter = None if key is None else follow.engine_name(key)
        self.template: str | None = meta.get("prompt_template")
        self.defaults = meta.get("generation", {})
        base = base_card()
        self.engine = Engine(
            model, self.tokenizer, adapters, device=self.device, dtype=self.dtype_choice.engine_dtype,
            kv_budget_tokens=setting("kv_budget", 65536 if gpu else 8192),
            max_batch=setting("max_batch", 64 if gpu else 32),
            max_queue=setting("max_queue", 64),
            max_prefill_tokens=setting("max_prefill_tokens", 2048 if gpu else 256),
            threads=None if gpu else torch_threads(),  # one process: HTTP is mostly idle
            max_model_len=self.context, adapter_mode=setting("adapter_mode", "mixed", str),
            cpu_weight_layout=self.dtype_choice.weight_layout == "transposed",
            observer=Metrics(base["name"]), model_name=base["name"])
        return base, local, dtype_name

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
            repetition_penalty=float(self.defaults.get("repetition_penalty", 1.0))),
            self.adapter)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.close()


TuneshipLM.add_asgi_middleware(Guard, api_key=os.environ.get("TUNESHIP_API_KEY") or None,
                               max_body_bytes=ARGS.max_request_bytes,
                               delegated_prefixes=platform_mode.DELEGATED_PREFIXES
                               if upload_limit else (), delegated_max_body_bytes=upload_limit)
# Added second = inside the Guard: only requests with a valid key are recorded.
TuneshipLM.add_asgi_middleware(InferenceLog, card=model_card, **log_options(ARGS))
