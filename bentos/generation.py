"""Tuneship text generation, served by BentoML 1.4: the bento of a causal-LM champion.

`make bento experiment=shakespeare_lora` (or `smoke_lm`) builds it from this module (the
classification bento uses `service.py`). One service, `TuneshipLM`, on port 3000:

- `POST /generate`: `prompt`, `max_new_tokens` (bounded by the bento argument), `temperature`
  (0 = greedy), `top_p`, `stop` strings, `seed` → the generated text, why it ended
  (`stop` = a stop string or the end-of-sequence token, `length` = `max_new_tokens` reached) and
  token counts.
- `POST /generate_stream`: the same request; the text is streamed (text/plain) as it is produced.
- `GET /model`, `/healthz`, `/readyz`, `/metrics` (BentoML's plus token and finish counters).

The same guards as `/classify` (guards.py: API key, JSON only, body limit); bad parameters get a
400 that names them. Generation runs one request at a time per worker (a CPU runs one `generate`
fastest alone; at most MAX_QUEUED in all, running or waiting: beyond that 503 "busy" with
`Retry-After`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import queue
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from bentoml.exceptions import InvalidArgument
from common import ModelRef, device, load_args, stored_card, torch_threads
from guards import Capacity, Guard
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, StringConstraints
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

log = logging.getLogger("tuneship.generation")
ARGS, MODEL_TAG = load_args()
MAX_QUEUED = 16  # generations running or waiting for the model before new ones get 503
STOP_CHARS = 64

GENERATIONS = Counter("tuneship_generations", "Generations finished, by reason", ["finish_reason"])
PROMPT_TOKENS = Counter("tuneship_prompt_tokens", "Prompt tokens read")
COMPLETION_TOKENS = Counter("tuneship_completion_tokens", "Tokens generated")


# --- request and response bodies ----------------------------------------------------------------

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


# --- the model ----------------------------------------------------------------------------------


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


@dataclass
class Job:
    """One validated generation: token ids in, the `generate` arguments, the stop strings."""

    input_ids: list[int]
    kwargs: dict[str, Any]
    stop: list[str]
    seed: int | None
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client left


class StopWhenCancelled:
    """A `generate` stopping criterion: ends the generation once its client has gone."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def first_stop(text: str, stops: list[str], start: int = 0) -> int | None:
    """Index of the earliest stop string in `text` at or after `start`, else None."""
    found = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(found) if found else None


async def model_endpoint(_: Request) -> JSONResponse:
    return JSONResponse(model_card())


routes = Starlette(routes=[Route("/model", model_endpoint, methods=["GET"])])


@bentoml.service(traffic={"timeout": 300})
@bentoml.asgi_app(routes, path="/")
class TuneshipLM:
    """The causal LM, its tokenizer and a one-worker queue of generations."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        stored = self.bento_model
        meta = stored.info.metadata
        files = meta["transformers"]
        self.device = device()
        if self.device == "cpu":
            torch.set_num_threads(torch_threads(reserve=0))  # one process: HTTP is mostly idle
        self.tokenizer = AutoTokenizer.from_pretrained(stored.path_of(files["tokenizer"]))
        model = AutoModelForCausalLM.from_pretrained(
            stored.path_of(files["model"]), dtype=getattr(torch, files["torch_dtype"]),
            use_safetensors=True)
        self.model = model.to(self.device).eval()
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.template: str | None = meta.get("prompt_template")
        self.defaults = meta.get("generation", {})
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids) if self.eos_ids else 0
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="generate")
        self._generate(self.prepare("Hello", 1, 0.0, 1.0, [], None))  # warm-up before ready
        log.info("loaded %s on %s (%d torch threads, context %d tokens)", stored.tag,
                 self.device, torch.get_num_threads(), self.context)

    # -- validation and generation (worker thread) --

    def prepare(self, prompt: str, max_new_tokens: int | None, temperature: float,
                top_p: float, stop: list[str], seed: int | None) -> Job:
        """Tokenize and check the request against the model; InvalidArgument (400) if it cannot run."""
        text = self.template.format(prompt=prompt) if self.template else prompt
        ids = self.tokenizer(text, add_special_tokens=self.template is None)["input_ids"]
        limit = min(ARGS.max_new_tokens, int(self.defaults.get("max_new_tokens", 64)))
        new = max_new_tokens or limit
        if len(ids) + new > self.context:
            raise InvalidArgument(
                f"prompt is {len(ids)} tokens; with max_new_tokens={new} that exceeds the "
                f"model's context of {self.context} tokens: shorten the prompt or ask for fewer")
        kwargs: dict[str, Any] = {
            "max_new_tokens": new, "pad_token_id": self.pad_id,
            "repetition_penalty": float(self.defaults.get("repetition_penalty", 1.0))}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
        return Job(ids, kwargs, stop, seed)

    def _generate(self, job: Job, streamer: Any = None) -> list[int]:
        """The new token ids (runs on the one worker thread); none if the client already left."""
        import torch
        from transformers import StoppingCriteriaList

        if job.cancelled.is_set():
            if streamer is not None:
                streamer.end()
            return []
        with torch.inference_mode():
            if job.seed is not None:
                torch.manual_seed(job.seed)
            input_ids = torch.tensor([job.input_ids], device=self.device)
            out = self.model.generate(input_ids=input_ids,
                                      attention_mask=torch.ones_like(input_ids),
                                      streamer=streamer, **job.kwargs,
                                      stopping_criteria=StoppingCriteriaList(
                                          [StopWhenCancelled(job.cancelled)]))
        return out[0, len(job.input_ids):].tolist()

    def submit(self, job: Job, streamer: Any = None) -> asyncio.Future[list[int]]:
        """Queue a generation on the worker (Capacity bounds how many wait: MAX_QUEUED)."""
        return asyncio.get_running_loop().run_in_executor(self.worker, self._generate, job,
                                                          streamer)

    def finish(self, job: Job, new_ids: list[int]) -> tuple[str, str]:
        """The text (cut before a stop string) and the finish reason; counts tokens."""
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        cut = first_stop(text, job.stop)
        ended = cut is not None or bool(new_ids and new_ids[-1] in self.eos_ids)
        reason = "stop" if ended else "length"
        GENERATIONS.labels(finish_reason=reason).inc()
        PROMPT_TOKENS.inc(len(job.input_ids))
        COMPLETION_TOKENS.inc(len(new_ids))
        return (text if cut is None else text[:cut]), reason

    # -- the API --

    @bentoml.api(route="/generate", input_spec=GenerateRequest, output_spec=GenerateResponse)
    async def generate(self, prompt: str, max_new_tokens: int | None = None,
                       temperature: float = 0.0, top_p: float = 1.0,
                       stop: list[str] | None = None, seed: int | None = None
                       ) -> GenerateResponse:
        """Generate a continuation of `prompt` (the model's chat template applied if it has one)."""
        job = self.prepare(prompt, max_new_tokens, temperature, top_p, stop or [], seed)
        try:
            new_ids = await self.submit(job)
        except asyncio.CancelledError:  # the client disconnected: free the model for the next
            self.cancel(job)
            raise
        text, reason = self.finish(job, new_ids)
        card = model_card()
        return GenerateResponse(
            text=text, finish_reason=reason,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=len(job.input_ids), completion_tokens=len(new_ids),
                        total_tokens=len(job.input_ids) + len(new_ids)),
            model=ModelRef(name=card["name"], version=card["version"], alias=card["alias"],
                           bento_model=card["bento_model"]))

    @bentoml.api(route="/generate_stream", input_spec=GenerateRequest)
    async def generate_stream(self, prompt: str, max_new_tokens: int | None = None,
                              temperature: float = 0.0, top_p: float = 1.0,
                              stop: list[str] | None = None, seed: int | None = None
                              ) -> AsyncGenerator[str, None]:
        """The same generation, streamed as plain text while it is produced."""
        from transformers import TextIteratorStreamer

        job = self.prepare(prompt, max_new_tokens, temperature, top_p, stop or [], seed)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, timeout=1.0,
                                        skip_special_tokens=True)
        future = self.submit(job, streamer)
        hold = max((len(s) for s in job.stop), default=1) - 1  # a stop string may be cut in two
        text, sent, complete = "", 0, False
        try:
            async for chunk in _chunks(streamer, future):
                text += chunk
                cut = first_stop(text, job.stop, max(0, sent - hold))
                if cut is not None:
                    yield text[sent:cut]
                    sent = len(text)
                    break
                if len(text) - hold > sent:
                    yield text[sent:len(text) - hold]
                    sent = len(text) - hold
            if sent < len(text) and first_stop(text, job.stop) is None:
                yield text[sent:]
            complete = True
        finally:
            if not complete:  # the client disconnected mid-stream (or generation failed)
                self.cancel(job)
        self.finish(job, await future)

    def cancel(self, job: Job) -> None:
        """Stop a generation whose client has gone (at its next token, or before it starts)."""
        job.cancelled.set()
        GENERATIONS.labels(finish_reason="cancelled").inc()
        log.info("client gone: generation cancelled")


async def _chunks(streamer: Any, future: asyncio.Future) -> AsyncGenerator[str, None]:
    """Text pieces from a TextIteratorStreamer until generation ends (or fails)."""
    loop = asyncio.get_running_loop()
    pieces, end = iter(streamer), object()
    while True:
        try:
            piece = await loop.run_in_executor(None, next, pieces, end)
        except queue.Empty:  # nothing for a second: finished with an error, or just slow
            if future.done():
                future.result()  # re-raises the generation's error
                return
            continue
        if piece is end:
            return
        if piece:
            yield piece


TuneshipLM.add_asgi_middleware(Guard, api_key=os.environ.get("TUNESHIP_API_KEY") or None,
                               max_body_bytes=ARGS.max_request_bytes)
# Inside Guard (added after it): only authorised, well-formed requests take a place.
TuneshipLM.add_asgi_middleware(Capacity, limit=MAX_QUEUED, what="generations",
                               paths=frozenset({"/generate", "/generate_stream"}))
