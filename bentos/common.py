"""What the classification (`service.py`) and generation (`generation.py`) services share:
the bento arguments, offline settings, device and thread choice, the served-model reference."""

from __future__ import annotations

import os

import bentoml
from pydantic import BaseModel, ConfigDict, Field

# The model is inside the bento: never wait on the hub (transformers is imported later, on load).
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ServeArgs(BaseModel):
    """Bento arguments (`bentoml build/serve --arg`); `make bento` fills them from conf/serve/."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model_tag: str | None = None
    alias: str = "champion"
    max_request_bytes: int = Field(1_048_576, gt=0)
    # /classify
    max_texts: int = Field(64, gt=0)
    max_text_chars: int = Field(2000, gt=0)
    batching: bool = True
    max_batch_size: int = Field(64, gt=1)
    max_latency_ms: int = Field(10_000, gt=0)
    # /generate
    max_prompt_chars: int = Field(4000, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    max_stop: int = Field(4, ge=0)


def load_args() -> tuple[ServeArgs, str]:
    """The bento arguments and the model tag to serve (TUNESHIP_MODEL_TAG overrides it)."""
    args = bentoml.use_arguments(ServeArgs)
    tag = os.environ.get("TUNESHIP_MODEL_TAG") or args.model_tag
    if not tag:
        raise RuntimeError("no model to serve: build the bento with `make bento` (bento argument "
                           "model_tag) or set TUNESHIP_MODEL_TAG to a model in the BentoML store")
    return args, tag


def flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def device() -> str:
    """TUNESHIP_DEVICE (auto|cpu|cuda): auto is cuda when available, else cpu."""
    import torch

    wanted = os.environ.get("TUNESHIP_DEVICE", "auto")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def torch_threads(reserve: int) -> int:
    """TUNESHIP_TORCH_THREADS, else the usable cores minus `reserve` (at least one).

    Every core is fastest on a machine the service has to itself (MiniLM, c=32 on 2 cores: 68.7
    req/s with 2 threads vs 49.1 with 1). On a shared, busy machine set it lower: threads then
    stall at torch's barriers (one tiny-BERT text: 165 ms with 2 threads, 3 ms with 1).
    """
    if value := os.environ.get("TUNESHIP_TORCH_THREADS"):
        return max(1, int(value))
    return max(1, len(os.sched_getaffinity(0)) - reserve)


class ModelRef(BaseModel):
    """Which registered model version answered (in every response)."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    alias: str
    bento_model: str


def stored_card(tag: str, alias: str) -> dict:
    """Name, version, alias, metrics and lineage of a model in the BentoML store."""
    stored = bentoml.models.get(tag)
    meta = stored.info.metadata
    return {"name": meta["name"], "version": str(meta["version"]),
            "alias": meta.get("alias") or alias,  # the alias it held when imported
            "bento_model": str(stored.tag), "task": meta.get("task", "text-classification"),
            "metrics": meta.get("metrics", {}), "lineage": meta.get("lineage", {})}
