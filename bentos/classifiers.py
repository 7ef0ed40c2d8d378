"""A transformers text classifier loaded for serving, and the classifiers served by registered name.

`load` builds a `Scorer` (tokenizer, runtime, labels) from a model folder: the bento's model in
`service.Classifier`, and every model `Named` loads. `Scorer.probs` groups texts by token count
into the forward passes of least padded-token cost (packing.py) and returns each label's
probability per text, with the same output function as transformers' text-classification
pipeline (sigmoid for multi-label or one-logit models, else softmax).

`Named` (platform mode, bentos/platform_mode.py): `POST /classify` with `"model"` naming a job
model (`ft-...`) answers from that registered version: `name` is the version holding the
service's alias, else the newest; `name/N` is version N; `name@alias` the version holding
`alias`. A version is downloaded from the MLflow registry on first use and stays loaded; beyond
`capacity` loaded versions the least recently used is dropped. A bare name is resolved again
after `resolve_ttl_s` seconds, so a newly promoted version answers without a restart.
"""

from __future__ import annotations

import collections
import fnmatch
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import registry_client
import runtimes
from packing import plan_passes
from registry_client import RegistryUnavailable  # noqa: F401  (503; service.py names it here)

log = logging.getLogger("tuneship.classifiers")
JOB_MODELS = "ft-*"  # tuneship.jobs.requests.registered_name: ft-<base>[-<suffix>]-<hex>
# MLflow's error codes for a missing model or version (RESOURCE_DOES_NOT_EXIST) and alias
# (INVALID_PARAMETER_VALUE)
MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
_REF = re.compile(r"^(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_-]+))?$")


class UnknownModel(LookupError):
    """No classifier is served under that name (404)."""


@dataclass
class Scorer:
    """A loaded classifier: its tokenizer, the runtime it answers with and its label names."""

    tokenizer: Any
    runtime: runtimes.Runtime
    labels: list[str]
    max_length: int
    sigmoid: bool
    token_budget: int
    pass_cost: float

    def probs(self, texts: list[str]) -> list[list[float]]:
        """Probabilities per text (label-id order), in input order."""
        return self.probs_with(self.runtime, texts)

    def probs_with(self, runtime: runtimes.Runtime, texts: list[str]) -> list[list[float]]:
        """`probs` from another runtime of the same model (start-up timing, parity)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        out: list[list[float]] = [[] for _ in texts]
        for chunk in plan_passes([len(x) for x in ids], self.token_budget, self.pass_cost):
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]},
                                       return_tensors="np")
            logits = runtime.logits(batch["input_ids"].astype(np.int64),
                                    batch["attention_mask"].astype(np.int64))
            for i, row in zip(chunk, self._outputs(logits).tolist(), strict=True):
                out[i] = row
        return out

    def _outputs(self, logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float64)
        if self.sigmoid:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)


def load(model_dir: str, tokenizer_dir: str, dtype: str, device: str,
         label_names: list[str] | None, token_budget: int, pass_cost: float,
         source: str) -> Scorer:
    """A classifier folder as an eager torch `Scorer`; RuntimeError if its labels differ from
    the recorded `label_names` (`source` names it in the message)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=getattr(torch, dtype),
        use_safetensors=True)  # never unpickle weights: a .bin-only model fails to load
    config = model.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    if label_names is not None and labels != list(label_names):
        raise RuntimeError(f"{source}: model labels {labels} differ from the recorded "
                           f"{list(label_names)}")
    eager = runtimes.TorchRuntime(runtimes.eager_name(dtype), model.to(device).eval(), device)
    return Scorer(tokenizer=tokenizer, runtime=eager, labels=labels,
                  max_length=min(tokenizer.model_max_length, config.max_position_embeddings),
                  sigmoid=config.problem_type == "multi_label_classification"
                  or config.num_labels == 1,
                  token_budget=token_budget, pass_cost=pass_cost)


@dataclass
class Entry:
    """A loaded version and the reference answers carry."""

    scorer: Scorer
    ref: dict[str, str]  # name, version, alias (as requested), bento_model (common.ModelRef)


Loader = Callable[[Any, str], Entry]  # (registry version, alias it answers as) -> Entry


class Named:
    """Job classifiers by registered name, loaded on first use, least recently used dropped."""

    def __init__(self, tracking_uri: str | None, cache_dir: Path, capacity: int, alias: str,
                 device: str, token_budget: int, pass_cost: float,
                 loader: Loader | None = None, resolve_ttl_s: float = 2.0) -> None:
        self.tracking_uri, self.cache_dir, self.alias = tracking_uri, cache_dir, alias
        self.capacity, self.resolve_ttl_s = capacity, resolve_ttl_s
        self.device, self.token_budget, self.pass_cost = device, token_budget, pass_cost
        self._load = loader or self._download_and_load
        self._loaded: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._resolved: dict[str, tuple[float, Any, str]] = {}  # ref -> (when, version, alias)
        self._lock = threading.Lock()
        self._client: Any = None

    def get(self, model: str) -> Entry:
        """The loaded version `model` names (loading it first); UnknownModel, RegistryUnavailable."""
        found = _REF.match(model)
        if found is None or not fnmatch.fnmatchcase(found["name"], JOB_MODELS):
            raise UnknownModel(f"model {model!r} is not served here: name the served model or "
                               f"a fine-tuning job's model ({JOB_MODELS}, optionally /N or "
                               "@alias)")
        version, alias = self._resolve(model, found)
        key = f"{version.name}/{version.version}"
        with self._lock:  # one load at a time: a burst for a new model downloads it once
            if key not in self._loaded:
                self._loaded[key] = self._load(version, alias)
                log.info("loaded classifier %s", key)
                while len(self._loaded) > self.capacity:
                    dropped, _ = self._loaded.popitem(last=False)
                    log.info("dropped classifier %s (least recently used; capacity %d)",
                             dropped, self.capacity)
            self._loaded.move_to_end(key)
            entry = self._loaded[key]
        return Entry(entry.scorer, {**entry.ref, "alias": alias})  # as this request named it

    def loaded(self) -> list[str]:
        """`name/version` of the loaded versions, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def _resolve(self, model: str, found: re.Match) -> tuple[Any, str]:
        cached = self._resolved.get(model)
        if cached is not None and (found["version"] or time.monotonic() - cached[0]
                                   < self.resolve_ttl_s):
            return cached[1], cached[2]
        client = self._registry()
        name = found["name"]
        try:
            if found["version"]:
                version, alias = client.get_model_version(name, found["version"]), ""
            elif found["alias"]:
                version = client.get_model_version_by_alias(name, found["alias"])
                alias = found["alias"]
            else:
                version, alias = self._bare(client, name)
        except UnknownModel:
            raise
        except Exception as err:  # noqa: BLE001 (MlflowException, or the store unreachable)
            if getattr(err, "error_code", None) in MISSING:
                raise UnknownModel(f"model {model!r} is not registered") from None
            raise RegistryUnavailable(f"the registry did not answer for {model!r}: "
                                      f"{type(err).__name__}: {err}") from None
        self._resolved[model] = (time.monotonic(), version, alias)
        return version, alias

    def _bare(self, client: Any, name: str) -> tuple[Any, str]:
        """The version holding the service's alias, else the newest."""
        holder = client.get_registered_model(name).aliases.get(self.alias)
        if holder is not None:
            return client.get_model_version(name, holder), self.alias
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise UnknownModel(f"model {name!r} has no versions")
        return max(versions, key=lambda v: int(v.version)), ""

    def _registry(self) -> Any:
        if self._client is None:
            self._client = registry_client.client(self.tracking_uri, "serving job models")
        return self._client

    def _download_and_load(self, version: Any, alias: str) -> Entry:
        """Download an MLflow transformers classifier version and load it."""
        local, meta = registry_client.download(
            self._registry(), version, self.cache_dir / f"{version.name}_{version.version}",
            self.tracking_uri)
        flavor = meta.flavors.get("transformers") or {}
        if flavor.get("task") != "text-classification":
            raise UnknownModel(f"{version.name} v{version.version} is not a text classifier "
                               f"(task {flavor.get('task') or 'unknown'})")
        tokenizer = "components/tokenizer" if "tokenizer" in flavor.get("components", []) \
            else flavor.get("model_binary", "model")
        dtype = str(flavor.get("torch_dtype", "torch.float32")).removeprefix("torch.")
        scorer = load(str(local / flavor.get("model_binary", "model")), str(local / tokenizer),
                      dtype, self.device, (meta.metadata or {}).get("label_names"),
                      self.token_budget, self.pass_cost, f"{version.name} v{version.version}")
        return Entry(scorer, {"name": version.name, "version": str(version.version),
                              "alias": alias, "bento_model": ""})
