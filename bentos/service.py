"""Tuneship text classification, served by BentoML 1.4 (`make bento`, then `make serve`).

Two services in one bento, the pattern BentoML documents for batching requests that carry more
than one parameter:

- `Tuneship` (public, port 3000): `POST /classify`, `GET /model`, `/healthz`, `/readyz`,
  `/metrics`; validation, optional API key and a body-size limit (guards.py).
- `Classifier` (internal, reachable only through `Tuneship`): holds the model in the runtime
  chosen at start (runtimes.py) and answers through adaptive-batching APIs, so texts from
  concurrent requests share one forward pass. A request alone in flight has an API of its own,
  so it is dispatched at once instead of waiting as the batcher learned to under load.

Settings are bento arguments written by `make bento` (conf/serve/); these environment variables
tune a running instance: TUNESHIP_API_KEY (turns key checks on), TUNESHIP_BATCHING=0 (off),
TUNESHIP_LONE_DISPATCH=0 (lone requests share the batching API), TUNESHIP_RUNTIME (auto or a
runtime name), TUNESHIP_DEVICE (auto|cpu|cuda), TUNESHIP_TORCH_THREADS (CPU intra-op threads, also
onnxruntime's), TUNESHIP_TOKEN_BUDGET (most padded tokens per forward pass),
TUNESHIP_PASS_COST_TOKENS (what a forward pass costs besides its tokens, in tokens),
TUNESHIP_MODEL_TAG (serve another imported model), TUNESHIP_MAX_NAMED_CLASSIFIERS (job models
kept loaded in platform mode).

Platform mode (`make serve-platform`, bentos/platform_mode.py) adds the fine-tuning jobs API
under `/v1`, and `/classify` answers `"model": "<fine_tuned_model>"` from that job's registered
classifier (classifiers.Named: loaded on first use, least recently used dropped).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import classifiers
import platform_mode
import runtimes
from bentoml.exceptions import ServiceUnavailable
from common import ModelRef, device, flag, load_args, stored_card, torch_threads
from guards import Guard
from inference_log import InferenceLog, feedback_endpoint
from inference_log import options as log_options
from packing import DEFAULTS
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, StringConstraints
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.status import HTTP_404_NOT_FOUND, HTTP_503_SERVICE_UNAVAILABLE

log = logging.getLogger("tuneship.service")
ARGS, MODEL_TAG = load_args()
BATCHING = flag("TUNESHIP_BATCHING", ARGS.batching)
LONE_DISPATCH = BATCHING and flag("TUNESHIP_LONE_DISPATCH", ARGS.lone_dispatch)
RUNTIME = os.environ.get("TUNESHIP_RUNTIME") or ARGS.runtime
MAX_NAMED = int(os.environ.get("TUNESHIP_MAX_NAMED_CLASSIFIERS") or ARGS.max_named_classifiers)

PREDICTIONS = Counter("tuneship_predictions", "Texts classified, by predicted label", ["label"])
RUNTIME_INFO = Gauge("tuneship_runtime_info", "The runtime the classifier serves with (1)",
                     ["runtime", "chosen_by"], multiprocess_mode="max")


# --- request and response bodies ----------------------------------------------------------------

Text = Annotated[StrictStr, StringConstraints(min_length=1, max_length=ARGS.max_text_chars)]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[Text] = Field(min_length=1, max_length=ARGS.max_texts,
                              description=f"1 to {ARGS.max_texts} texts of 1 to "
                                          f"{ARGS.max_text_chars} characters",
                              examples=[["a gripping, beautifully acted film"]])
    all_scores: StrictBool = Field(False, description="also return every label's score")
    model: StrictStr | None = Field(None, min_length=1, max_length=256,
                                    description="the served model (default), or in platform "
                                                "mode a fine-tuning job's model by name")


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float] | None = None


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    predictions: list[Prediction]
    model: ModelRef


# --- the model ----------------------------------------------------------------------------------


@functools.cache
def model_card() -> dict[str, Any]:
    """What `GET /model` shows: name, version, alias, metrics, lineage (from the model store)."""
    meta = bentoml.models.get(MODEL_TAG).info.metadata
    return {**stored_card(MODEL_TAG, ARGS.alias), "labels": meta["label_names"],
            "serving": {"batching": BATCHING, "lone_dispatch": LONE_DISPATCH,
                        "max_batch_size": ARGS.max_batch_size,
                        "max_latency_ms": ARGS.max_latency_ms, "max_texts": ARGS.max_texts,
                        "max_text_chars": ARGS.max_text_chars, "runtime_requested": RUNTIME}}


def runtimes_folder() -> Path:
    """The served model's runtimes/ (manifest and files from the optimize stage; may be absent)."""
    return Path(bentoml.models.get(MODEL_TAG).path_of("runtimes"))


def check_runtime() -> None:
    """Fail `bentoml serve` (and `bentoml build`) at once when the pinned runtime cannot be
    served here, rather than in a classifier worker that restarts forever."""
    dtype = bentoml.models.get(MODEL_TAG).info.metadata["transformers"]["torch_dtype"]
    runtimes.survey(runtimes.eager_name(dtype), runtimes_folder()).check(RUNTIME)


check_runtime()


# BentoML 1.4.31+ recycles the caller's client session every `max_requests` calls (default 100)
# or `max_age` seconds, closing it under requests still in flight: 500s under load
# (bentoml/BentoML#5540). Local sockets need no recycling, so it is pushed out of reach.
NO_RECYCLING = {"max_requests": 2**31 - 1, "max_age": 10.0**9}


@bentoml.service(traffic={"timeout": 60}, runner_connection=NO_RECYCLING,
                 logging={"access": {"enabled": False}})  # internal hop: Tuneship logs requests
class Classifier:
    """The model, loaded once per worker; `predict` returns each label's probability per text."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch

        stored = self.bento_model
        files = stored.info.metadata["transformers"]
        self.device = device()
        threads = torch_threads(reserve=0)  # measured: bentos/README.md
        if self.device == "cpu":
            torch.set_num_threads(threads)
        # How infer() cuts a batch into forward passes (packing.py), unless set for this host.
        budget, pass_cost = DEFAULTS["cpu" if self.device == "cpu" else "cuda"]
        self.token_budget = int(os.environ.get("TUNESHIP_TOKEN_BUDGET") or budget)
        self.pass_cost = float(os.environ.get("TUNESHIP_PASS_COST_TOKENS") or pass_cost)
        self.scorer = classifiers.load(
            stored.path_of(files["model"]), stored.path_of(files["tokenizer"]),
            files["torch_dtype"], self.device, stored.info.metadata["label_names"],
            self.token_budget, self.pass_cost, str(stored.tag))
        self.choice = runtimes.choose(self.scorer.runtime, runtimes_folder(), RUNTIME,
                                      self.scorer.probs_with, threads)
        self.runtime = self.scorer.runtime = self.choice.runtime
        self.named = classifiers.Named(
            os.environ.get("MLFLOW_TRACKING_URI"),
            Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "tuneship-classifiers",
            MAX_NAMED, ARGS.alias, self.device, self.token_budget, self.pass_cost) \
            if platform_mode.enabled() else None
        RUNTIME_INFO.labels(runtime=self.runtime.name, chosen_by=self.choice.chosen_by).set(1)
        self.infer(["warm-up"])  # the first request should not pay for lazy initialisation
        log.info("loaded %s on %s: runtime %s (%s; timings %s), %d threads, token budget %d, "
                 "pass cost %g, batching %s", stored.tag, self.device, self.runtime.name,
                 self.choice.chosen_by, self.choice.timings_ms or "-", threads,
                 self.token_budget, self.pass_cost, "on" if BATCHING else "off")

    def infer(self, texts: list[str]) -> list[list[float]]:
        """Probabilities per text, in input order, from the runtime chosen at start."""
        return self.scorer.probs(texts)

    @bentoml.api(batchable=BATCHING, batch_dim=0, max_batch_size=ARGS.max_batch_size,
                 max_latency_ms=ARGS.max_latency_ms)
    def predict(self, texts: list[str]) -> list[list[float]]:
        """Probabilities per text, in label-id order (batched across requests when on)."""
        return self.infer(texts)

    @bentoml.api(batchable=BATCHING, batch_dim=0, max_batch_size=ARGS.max_batch_size,
                 max_latency_ms=ARGS.max_latency_ms)
    def predict_alone(self, texts: list[str]) -> list[list[float]]:
        """`predict` for a request sent while no other is in flight: its dispatcher only ever
        sees one request at a time, so it learns no wait and dispatches at once."""
        return self.infer(texts)

    @bentoml.api
    def predict_named(self, texts: list[str], model: str) -> dict[str, Any]:
        """Probabilities per text from a job model named `model` (platform mode), with its
        labels and reference; or {"error", "status"} when it cannot answer."""
        if self.named is None:
            return {"status": HTTP_404_NOT_FOUND,
                    "error": f"model {model!r} is not served here (this service serves "
                             f"{model_card()['name']}; job models only in platform mode)"}
        try:
            entry = self.named.get(model)
        except classifiers.UnknownModel as err:
            return {"status": HTTP_404_NOT_FOUND, "error": str(err)}
        except classifiers.RegistryUnavailable as err:
            return {"status": HTTP_503_SERVICE_UNAVAILABLE, "error": str(err)}
        return {"probs": entry.scorer.probs(texts), "labels": entry.scorer.labels,
                "model": entry.ref}

    @bentoml.api
    async def runtime_card(self) -> dict[str, Any]:
        """The runtime in use, how it was chosen and the start-up timings (for `GET /model`);
        in platform mode also the job models loaded now."""
        card = self.choice.card()
        if self.named is not None:
            card = {**card, "named_classifiers": {"loaded": self.named.loaded(),
                                                  "capacity": self.named.capacity}}
        return card


# --- the public service -------------------------------------------------------------------------


def served_names(card: dict[str, Any]) -> set[str]:
    """The names a request may give the bento's own model by."""
    name = card["name"]
    return {name, f"{name}/{card['version']}", f"{name}@{card['alias']}", card["bento_model"]}


def _prediction(probs: list[float], labels: list[str], all_scores: bool) -> Prediction:
    best = max(range(len(probs)), key=probs.__getitem__)
    return Prediction(label=labels[best], score=probs[best],
                      scores=dict(zip(labels, probs, strict=True)) if all_scores else None)


async def model_endpoint(request: Request) -> JSONResponse:
    """The model card, with the runtime the classifier chose (null until it answers)."""
    service = request.app.state.service
    runtime = None
    if service is not None:
        try:
            runtime = await asyncio.wait_for(service.classifier.to_async.runtime_card(), 5)
        except Exception as err:  # still loading, or restarting: the card says so
            log.warning("runtime card unavailable: %s", err)
    return JSONResponse({**model_card(), "runtime": runtime})


routes = Starlette(routes=[Route("/model", model_endpoint, methods=["GET"]),
                           Route("/feedback", feedback_endpoint, methods=["POST"])])
routes.state.service = None
upload_limit = platform_mode.mount(routes, prefix="/v1")  # jobs API in platform mode, else None


# BentoML's own dependency probe can hang past its timeout while the classifier loads, and a
# hung /readyz then blocks graceful shutdown for 30 s: `__is_ready__` bounds it instead.
@bentoml.service(traffic={"timeout": 60}, runner_probe={"enabled": False})
@bentoml.asgi_app(routes, path="/")
class Tuneship:
    """Validates, forwards texts to the batching classifier and shapes the answer."""

    classifier = bentoml.depends(Classifier)

    def __init__(self) -> None:
        for label in model_card()["labels"]:
            PREDICTIONS.labels(label=label)  # every label's series exists from the start, at 0
        self.in_flight = 0  # /classify requests this worker is answering
        routes.state.service = self

    async def __is_ready__(self) -> bool:
        """Ready once the classifier (model loaded and warmed up) answers its probe in 2 s."""
        try:
            return await asyncio.wait_for(self.classifier.is_ready(2), timeout=2)
        except Exception:  # timeout, connection refused while it starts: not ready yet
            return False

    @bentoml.api(route="/classify", input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    async def classify(self, texts: list[str], all_scores: bool = False,
                       model: str | None = None) -> ClassifyResponse | JSONResponse:
        """Classify 1 to max_texts texts; `all_scores` adds every label's probability;
        `model` names a job model to answer instead (platform mode)."""
        card = model_card()
        if model is not None and model not in served_names(card):
            return await self._classify_named(texts, all_scores, model)
        self.in_flight += 1
        try:
            probs = await self._predict(texts, alone=self.in_flight == 1)
        except ServiceUnavailable:  # the batcher shed it: BentoML would answer "unexpected error"
            return JSONResponse({"error": f"overloaded: the model cannot answer within "
                                          f"max_latency_ms={ARGS.max_latency_ms}; retry later"},
                                status_code=503)  # Guard adds Retry-After
        finally:
            self.in_flight -= 1
        predictions = [_prediction(p, card["labels"], all_scores) for p in probs]
        for label, count in collections.Counter(p.label for p in predictions).items():
            PREDICTIONS.labels(label=label).inc(count)
        return ClassifyResponse(predictions=predictions, model=ModelRef(
            name=card["name"], version=card["version"], alias=card["alias"],
            bento_model=card["bento_model"]))

    async def _classify_named(self, texts: list[str], all_scores: bool,
                              model: str) -> ClassifyResponse | JSONResponse:
        answer = await self.classifier.to_async.predict_named(texts=texts, model=model)
        if "error" in answer:
            return JSONResponse({"error": answer["error"]}, status_code=answer["status"])
        predictions = [_prediction(p, answer["labels"], all_scores) for p in answer["probs"]]
        return ClassifyResponse(predictions=predictions, model=ModelRef(**answer["model"]))

    async def _predict(self, texts: list[str], alone: bool) -> list[list[float]]:
        """The classifier's batching API, or its lone-request one when nothing else is in
        flight here (Tuneship is the classifier's only caller, so it then has no queue)."""
        if alone and LONE_DISPATCH:
            return await self.classifier.to_async.predict_alone(texts)
        return await self.classifier.to_async.predict(texts)


Tuneship.add_asgi_middleware(Guard, api_key=os.environ.get("TUNESHIP_API_KEY") or None,
                             max_body_bytes=ARGS.max_request_bytes,
                             delegated_prefixes=platform_mode.DELEGATED_PREFIXES
                             if upload_limit else (), delegated_max_body_bytes=upload_limit)
# Added second = inside the Guard: only requests with a valid key are recorded.
Tuneship.add_asgi_middleware(InferenceLog, card=model_card, **log_options(ARGS))
