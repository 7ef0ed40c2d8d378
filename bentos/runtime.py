"""The serving contract shared with the training side: the bento arguments (`ServeArgs`, the
one definition of the serving limits), offline hub settings, device and thread choice.

Owned here because the image carries only `bentos/`; the `tuneship` package loads this file by
path (`tuneship.settings`), so both sides follow one rule. Importing it sets the offline
variables for this process and every process it starts. Only the standard library and pydantic
at import time (torch is imported when a device is chosen).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OFFLINE_VARS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"}


def use_offline_hub() -> None:
    """Never wait on the model/dataset hub unless the user opted in (TUNESHIP_ONLINE=1)."""
    online = os.environ.get("TUNESHIP_ONLINE") == "1"
    for key, value in OFFLINE_VARS.items():
        if not online or key == "TOKENIZERS_PARALLELISM":
            os.environ.setdefault(key, value)


def flag(name: str, default: bool) -> bool:
    """An on/off environment variable (`0`, `false`, `no`, `off` are off; unset is `default`)."""
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def device(requested: str | None = None) -> str:
    """`requested` (else TUNESHIP_DEVICE, else auto): auto is cuda when available, else cpu.

    Raises ValueError for cuda without a visible CUDA device or an unknown name.
    """
    import torch

    wanted = requested or os.environ.get("TUNESHIP_DEVICE", "auto")
    if wanted not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda (got {wanted!r})")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is visible")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def release_free_memory() -> bool:
    """Hand memory the process has freed back to the OS (glibc's `malloc_trim`); False where
    there is no glibc. Loading a model, timing candidate dtypes and re-laying weights out free
    hundreds of MB that the allocator would otherwise keep resident."""
    import ctypes
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container's cpuset limits)."""
    return len(os.sched_getaffinity(0)) or 1


def torch_threads(requested: int | None = None, reserve: int = 0) -> int:
    """`requested`, else TUNESHIP_TORCH_THREADS, else the usable cores minus `reserve` (>= 1).

    Every core is fastest on a machine the process has to itself; on a shared, busy machine a
    lower value avoids threads stalling at torch's barriers (bentos/README.md#load-test).
    """
    if requested:
        return max(1, requested)
    if value := os.environ.get("TUNESHIP_TORCH_THREADS"):
        return max(1, int(value))
    return max(1, usable_cores() - reserve)


class ServeArgs(BaseModel):
    """Bento arguments (`bentoml build/serve --arg`); `make bento` fills them from conf/serve/."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model_tag: str | None = None
    alias: str = "champion"
    max_request_bytes: int = Field(1_048_576, ge=1024)
    # /classify
    max_texts: int = Field(64, gt=0)
    max_text_chars: int = Field(2000, gt=0)
    batching: bool = True
    max_batch_size: int = Field(64, gt=1)
    max_latency_ms: int = Field(10_000, gt=0)
    # A request alone in flight goes to its own batching API, whose dispatcher never learns
    # to wait from traffic under load (bentos/README.md#a-lone-client); off: one API for all.
    lone_dispatch: bool = True
    # Which runtime serves: auto = the fastest parity-passed one, timed at start on this host;
    # or a name from the model's runtimes/manifest.json (torch-fp32 is always there).
    runtime: str = Field("auto", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    # platform mode: job classifiers kept loaded for `/classify` by name (least recently used
    # dropped beyond; TUNESHIP_MAX_NAMED_CLASSIFIERS wins)
    max_named_classifiers: int = Field(2, ge=1)
    # The inference table (bentos/inference_log.py): no directory = off; TUNESHIP_INFERENCE_LOG_*
    # environment variables win (the directory depends on the host: set it at serve time).
    inference_log_dir: str | None = None
    inference_log_sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    inference_log_privacy: Literal["full", "redacted", "stats-only"] = "redacted"
    inference_log_retention_days: int = Field(30, ge=1)
    inference_log_buffer_size: int = Field(10_000, ge=1)
    # /generate
    max_prompt_chars: int = Field(4000, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    max_stop: int = Field(4, ge=0)
    # the LLM service (generation.py): which adapters, under which names, and the engine
    llm_follow: list[str] = Field(default_factory=list)  # registry refs followed at run time
    llm_adapters: dict[str, str] = Field(default_factory=dict)  # "name/version" -> model tag
    llm_aliases: dict[str, str] = Field(default_factory=dict)   # "name@alias" -> "name/version"
    llm_registry_uri: str | None = None  # the MLflow registry to follow (MLFLOW_TRACKING_URI wins)
    llm_registry_poll_s: float = Field(0.0, ge=0.0)  # 0: follow the registry on reload only
    llm_kv_budget: int | None = Field(None, gt=0)    # None: 8192 tokens (CPU), 65536 (GPU)
    llm_max_batch: int | None = Field(None, gt=0)    # None: 32 (CPU), 64 (GPU)
    llm_max_queue: int = Field(64, ge=0)
    llm_max_prefill_tokens: int | None = Field(None, gt=0)  # None: 256 (CPU), 2048 (GPU) a pass
    llm_adapter_mode: Literal["mixed", "grouped"] = "mixed"
    # the base model's weights in the LLM engine: auto = bfloat16 on a GPU; on a CPU bfloat16
    # or int8 (weight-only) if timed faster at start (engine.choose_dtype); never a dtype that
    # failed parity, int8 only where the optimize stage's manifest passed it
    llm_dtype: Literal["auto", "float32", "bfloat16", "int8"] = "auto"


use_offline_hub()
