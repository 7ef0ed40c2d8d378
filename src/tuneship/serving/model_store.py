"""Copy the registry's champion into the BentoML model store, with its lineage.

Why `bentoml.mlflow.import_model` rather than re-saving a pipeline with `bentoml.transformers`:
the store then holds the registered artifact byte for byte (MLmodel, signature, requirements,
weights, tokenizer), downloaded by MLflow from whatever store or server holds it, so the served
model is provably the registered version. The service still loads it with plain transformers
from the paths the MLmodel's `transformers` flavour names (recorded in the metadata below):
no MLflow in the image, and full control over device, batching and truncation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import bentoml
import mlflow
from bentoml.exceptions import NotFound
from mlflow.entities.model_registry import ModelVersion

from tuneship.config import RegistryConfig
from tuneship.errors import TuneshipError
from tuneship.serving.config import ServeConfig
from tuneship.settings import bento_module
from tuneship.tracking import by_alias, connect

log = logging.getLogger(__name__)
LINEAGE_TAGS = ("run_id", "git_commit", "data_fingerprint", "base_model", "experiment")


def import_champion(reg: RegistryConfig, serve: ServeConfig) -> bentoml.Model:
    """Import `models:/<name>@<alias>` (reusing an earlier import of the same version)."""
    client = connect(reg)
    version = by_alias(client, serve.model_name, serve.alias)
    if version is None:
        raise TuneshipError(f"{serve.model_name} has no @{serve.alias} in {reg.tracking_uri}: "
                            f"run the pipeline (make pipeline) first")
    return import_version(version, serve.alias)


@dataclass
class Adapters:
    """What an LLM bento serves: one base and the adapters the follow references name."""

    base: bentoml.Model
    adapters: dict[str, bentoml.Model] = field(default_factory=dict)  # "name/version" -> model
    aliases: dict[str, str] = field(default_factory=dict)             # "name@alias" -> key
    skipped: dict[str, str] = field(default_factory=dict)


def import_adapters(reg: RegistryConfig, serve: ServeConfig, champion: bentoml.Model) -> Adapters:
    """Import the champion adapter's base and every adapter `serve.llm_follow` names."""
    refs = bento_module("adapter_refs")
    client = connect(reg)
    meta = champion.info.metadata
    name, _, number = meta["base"]["registered"].rpartition("/")
    base = import_version(client.get_model_version(name, number), "base")
    sha = base.info.metadata.get("sha256")
    try:
        found = refs.resolve(client, [*serve.llm_follow, f"{meta['name']}/{meta['version']}"],
                             base_sha=sha)
    except ValueError as err:
        raise TuneshipError(f"serve.llm_follow: {err}") from None
    for what, why in found.skipped.items():
        log.warning("not serving %s: %s", what, why)
    held: dict[str, list[str]] = {}
    for alias, target in found.aliases.items():
        held.setdefault(target, []).append(alias.rpartition("@")[2])
    adapters = {k: import_version(v, _label(held.get(k, []), serve.alias))
                for k, v in found.versions.items()}
    return Adapters(base, adapters, found.aliases, found.skipped)


def _label(aliases: list[str], preferred: str) -> str:
    """The alias recorded with an import: the served alias when the version holds it."""
    return preferred if preferred in aliases else (sorted(aliases) or [""])[0]


def import_version(version: ModelVersion, alias: str) -> bentoml.Model:
    """Import one registered version into the BentoML store (once: same tag, same metadata)."""
    tag = model_tag(version)
    uri = f"models:/{version.name}/{version.version}"  # the version, not the alias: no race
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    metadata = model_metadata(version, alias, mlflow.models.get_model_info(uri))
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata == metadata:
            log.info("%s is already in the BentoML store", tag)
            return existing
        # Imported by an older Tuneship (other metadata): built bentos keep their own copy.
        log.info("re-importing %s: its metadata in the store is out of date", tag)
        bentoml.models.delete(tag)
    model = bentoml.mlflow.import_model(tag, uri, labels=model_labels(version, alias),
                                        metadata=metadata)
    log.info("imported %s (%s) as %s", uri, alias, model.tag)
    return model


def model_tag(version: ModelVersion) -> str:
    """`<name>:v<version>-<run id prefix>`: stable for a version, distinct across stores."""
    return f"{version.name.lower()}:v{version.version}-{(version.run_id or 'norun')[:8]}"


def model_labels(version: ModelVersion, alias: str) -> dict[str, str]:
    """Short string labels for `bentoml models list` and filters."""
    tags = version.tags
    return {"registered_model": version.name, "registered_version": str(version.version),
            "alias": alias, "run_id": version.run_id or "",
            "data_fingerprint": tags.get("data_fingerprint", ""),
            "experiment": tags.get("experiment", "")}


SERVABLE_TASKS = ("text-classification", "text-generation")


def model_metadata(version: ModelVersion, alias: str,
                   info: mlflow.models.model.ModelInfo) -> dict:
    """Name, version, task, metrics, lineage and the files the service loads (plus label names
    for a classifier; generation defaults and chat prompt template for a causal LM)."""
    flavor = info.flavors.get("transformers")
    task = (flavor or {}).get("task")
    if task not in SERVABLE_TASKS:
        raise TuneshipError(f"{version.name} v{version.version} is not an MLflow transformers "
                            f"model of a task Tuneship serves ({', '.join(SERVABLE_TASKS)}): "
                            f"got {task or 'no transformers flavour'}")
    tags = version.tags
    metrics = {k.removeprefix("metric."): float(v) for k, v in tags.items()
               if k.startswith("metric.")}
    tokenizer = "components/tokenizer" if "tokenizer" in flavor.get("components", []) else None
    files = {"tokenizer": f"mlflow_model/{tokenizer or flavor.get('model_binary')}",
             "torch_dtype": str(flavor.get("torch_dtype", "torch.float32")).removeprefix("torch.")}
    if "peft_adaptor" in flavor:  # a LoRA adapter version: its base is another version
        files["adapter"] = f"mlflow_model/{flavor['peft_adaptor']}"
    else:
        files["model"] = f"mlflow_model/{flavor['model_binary']}"
    meta = {
        "name": version.name, "version": str(version.version), "alias": alias, "task": task,
        "metrics": metrics, "lineage": {key: tags.get(key, "") for key in LINEAGE_TAGS},
        "transformers": files,
    }
    if "sha256" in tags:  # a base version
        meta["sha256"] = tags["sha256"]
    if "adapter" in files:
        meta["base"] = {"registered": tags.get("base_model.registered", ""),
                        "sha256": tags.get("base_model.sha256", "")}
    if task == "text-generation":
        pyfunc = info.flavors.get("python_function", {})
        meta["generation"] = dict(pyfunc.get("config") or {})
        template = (info.metadata or {}).get("prompt_template")  # where MLflow records it
        if template:  # an instruction model: each prompt is one user turn
            meta["prompt_template"] = template
        return meta
    labels = (info.metadata or {}).get("label_names")
    if not labels:
        raise TuneshipError(f"{version.name} v{version.version} records no label_names")
    return {**meta, "label_names": list(labels)}
