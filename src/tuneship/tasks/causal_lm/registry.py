"""The registry side of a causal LM: the base model is registered once per set of weights
(found again by its SHA-256), each fine-tune is registered as its LoRA adapter alone.

An adapter version is an MLflow transformers model logged with `base_model_path` (MLflow's
PEFT support): its artifact holds the adapter (`peft/`) and the tokenizer, and names the base
folder it was trained on. Its tags say which registered base version holds those weights
(`base_model.registered` = `<name>/<version>`, `base_model.sha256`), so a machine without that
folder loads the base from the registry (`base_folder`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import transformers
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from tuneship.errors import TuneshipError
from tuneship.registry.lineage import pinned
from tuneship.tasks.causal_lm.data import tokenizer_digest
from tuneship.tasks.causal_lm.model import BaseRef, load_base

log = logging.getLogger(__name__)
BASE_TAG = "base_model.registered"  # on an adapter version: `<base name>/<base version>`
SHA_TAG = "sha256"                  # on a base version: the SHA-256 of its weight files


def find_base(client: MlflowClient, name: str, sha256: str) -> ModelVersion | None:
    """The registered version of base `name` whose weights have this SHA-256, if any."""
    found = client.search_model_versions(f"name = '{name}' and tags.{SHA_TAG} = '{sha256}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def register_base(client: MlflowClient, name: str, ref: BaseRef, tokenizer) -> ModelVersion:
    """`name`'s version holding these base weights: found by SHA-256, else logged (in the
    active run, as artifact `base_model`) and registered now."""
    if not ref.sha256:
        raise TuneshipError(f"base model '{ref.source}' is not a local folder: its weights "
                            "cannot be pinned by SHA-256 nor registered")
    existing = find_base(client, name, ref.sha256)
    if existing is not None:
        log.info("base %s is registered as %s v%s", ref.path, name, existing.version)
        return existing
    pipe = transformers.pipeline("text-generation", model=load_base(ref.path),
                                 tokenizer=tokenizer)
    info = mlflow.transformers.log_model(
        transformers_model=pipe, name="base_model", task="text-generation",
        pip_requirements=pinned(), registered_model_name=name,
        metadata={"base_model.source": ref.source, "base_model.path": ref.path,
                  SHA_TAG: ref.sha256, "served": "base"})
    version = str(info.registered_model_version)
    for key, value in {SHA_TAG: ref.sha256, "base_model.source": ref.source}.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=(
        f"Base weights of the causal-LM fine-tunes (from `{ref.source}`); SHA-256 "
        f"`{ref.sha256}`. Fine-tunes are registered as LoRA adapters that name this version "
        f"in their `{BASE_TAG}` tag."))
    log.info("registered base %s as %s v%s", ref.path, name, version)
    return client.get_model_version(name, version)


def base_folder(client: MlflowClient, version: ModelVersion, local: str | None) -> str:
    """A folder with the base weights of adapter `version`: `local` (the path recorded at
    logging) when it exists, else the registered base version's artifact, downloaded."""
    if local and (Path(local) / "config.json").is_file():
        return local
    ref = version.tags.get(BASE_TAG)
    if not ref:
        raise TuneshipError(f"{version.name} v{version.version}: its base folder {local} is gone "
                            f"and it names no registered base ({BASE_TAG} tag)")
    name, _, number = ref.rpartition("/")
    uri = f"models:/{name}/{number}"
    folder = Path(mlflow.artifacts.download_artifacts(uri))
    binary = mlflow.models.get_model_info(uri).flavors["transformers"]["model_binary"]
    return str(folder / binary)


def load_scorable(client: MlflowClient, version: ModelVersion, vocabulary: str):
    """A registered version's model and tokenizer (an adapter with its base), ready to score
    test blocks tokenized with `vocabulary` (a tokenizer digest); another vocabulary is an
    error, since perplexities per token would not compare."""
    uri = f"models:/{version.name}/{version.version}"
    local = mlflow.models.get_model_info(uri).flavors["transformers"].get("local_base_model_path")
    extra = {"base_model_path": base_folder(client, version, local)} if local else {}
    parts = mlflow.transformers.load_model(uri, return_type="components", **extra)
    tokenizer = parts["tokenizer"]
    if tokenizer_digest(tokenizer) != vocabulary:
        raise TuneshipError(f"{version.name} v{version.version} uses another vocabulary than "
                            "this test split: perplexities per token cannot be compared")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return parts["model"], tokenizer
