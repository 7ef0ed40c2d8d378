"""Copy the registry's champion into the BentoML model store, with its lineage and runtimes.

Why an MLflow download into a BentoML model rather than re-saving a pipeline with
`bentoml.transformers`: the store then holds the registered artifact byte for byte (MLmodel,
signature, requirements, weights, tokenizer) under `mlflow_model/`, downloaded by MLflow from
whatever store or server holds it, so the served model is provably the registered version
(what `bentoml.mlflow.import_model` does, written out so the model can also carry runtimes).
Beside it, `runtimes/` holds what the optimize stage recorded in the version's run (the
manifest and ONNX files; bentos/runtimes.py). The service loads the model with plain
transformers from the paths the MLmodel's `transformers` flavour names (recorded in the
metadata below): no MLflow in the image, and full control over device, batching and truncation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

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
RUNTIMES = "runtimes"  # the folder the optimize stage writes in the version's run


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
    manifest = runtimes_manifest(version)
    if manifest is not None:
        metadata["runtimes"] = runtimes_metadata(manifest, version)
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata == metadata:
            log.info("%s is already in the BentoML store", tag)
            return existing
        # Imported by an older Tuneship, or optimized since: built bentos keep their own copy.
        log.info("re-importing %s: its metadata in the store is out of date", tag)
        bentoml.models.delete(tag)
    with bentoml.models.create(tag, labels=model_labels(version, alias),
                               metadata=metadata) as model:
        download(uri, Path(model.path_of("mlflow_model")))
        if not Path(model.path_of("mlflow_model/MLmodel")).is_file():
            raise TuneshipError(f"{uri} is not an MLflow model (no MLmodel file)")
        if manifest is not None:
            download_runtimes(version, manifest, Path(model.path_of(RUNTIMES)))
    log.info("imported %s (%s) as %s%s", uri, alias, model.tag,
             f" with runtimes {metadata['runtimes']['passed']}" if manifest else "")
    return model


def download(uri: str, target: Path) -> None:
    """Download an MLflow artifact folder to `target` (a new folder)."""
    # A models:/ download may hand back the temporary folder itself: moved, nothing to clean.
    with tempfile.TemporaryDirectory(dir=target.parent, ignore_cleanup_errors=True) as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        shutil.move(local, target)


def download_runtimes(version: ModelVersion, manifest: dict, target: Path) -> None:
    """The manifest and the folder of each passed runtime that has files (an earlier optimize
    run may have left others in the run)."""
    target.mkdir()
    download(f"runs:/{version.run_id}/{RUNTIMES}/manifest.json", target / "manifest.json")
    for entry in manifest["runtimes"]:
        if entry.get("passed") and entry.get("file"):
            folder = entry["file"].split("/")[0]
            download(f"runs:/{version.run_id}/{RUNTIMES}/{folder}", target / folder)


def runtimes_manifest(version: ModelVersion) -> dict | None:
    """The version's `runtimes/manifest.json` from its run, or None before it is optimized."""
    if not version.run_id:
        return None
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(version.run_id, RUNTIMES)}
    if f"{RUNTIMES}/manifest.json" not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=f"{RUNTIMES}/manifest.json", dst_path=tmp)
        return json.loads(Path(path).read_text())


def runtimes_metadata(manifest: dict, version: ModelVersion) -> dict:
    """The runtimes a service may choose from (parity passed) and the reasons for the rest."""
    try:
        entries = {r["name"]: r for r in manifest["runtimes"]}
        passed = {name: {"kind": r["kind"], "dtype": r["dtype"], "parity": r.get("parity") or {}}
                  for name, r in entries.items() if r.get("passed")}
    except (KeyError, TypeError) as err:
        raise TuneshipError(f"{version.name} v{version.version}: runs:/{version.run_id}/"
                            f"{RUNTIMES}/manifest.json lacks {err}") from None
    return {"reference": manifest.get("reference", "torch-fp32"), "passed": sorted(passed),
            "candidates": passed,
            "failed": {name: r.get("reason") or "" for name, r in entries.items()
                       if not r.get("passed")}}


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
