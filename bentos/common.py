"""What the classification (`service.py`) and generation (`generation.py`) services share: reading
the bento arguments (`runtime.ServeArgs`) and the served-model reference."""

from __future__ import annotations

import os

import bentoml
from pydantic import BaseModel, ConfigDict
from runtime import (  # noqa: F401  (sets the offline variables)
    ServeArgs,
    device,
    flag,
    release_free_memory,
    torch_threads,
)


def load_args() -> tuple[ServeArgs, str]:
    """The bento arguments and the model tag to serve (TUNESHIP_MODEL_TAG overrides it)."""
    args = bentoml.use_arguments(ServeArgs)
    tag = os.environ.get("TUNESHIP_MODEL_TAG") or args.model_tag
    if not tag:
        raise RuntimeError("no model to serve: build the bento with `make bento` (bento argument "
                           "model_tag) or set TUNESHIP_MODEL_TAG to a model in the BentoML store")
    return args, tag


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
