"""The promote stage and rollback: move the `champion` alias, record why and from where."""

from __future__ import annotations

import contextlib
import json
import logging

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuneship.config import RegistryConfig
from tuneship.context import StageContext
from tuneship.errors import TuneshipError
from tuneship.registry.gate import Decision, decide
from tuneship.tracking import by_alias, store_lock

log = logging.getLogger(__name__)
HISTORY_TAG = "tuneship.champion_history"


def run(ctx: StageContext) -> dict:
    """Judge the challenger against the gate; promote it to champion when it passes.

    A champion tested on other data is re-scored on this test split by the task.
    """
    reg = ctx.registry
    client = ctx.client()
    with store_lock(reg.tracking_uri):  # read champion → decide → move alias, one pipeline at a time
        return _judge(ctx, client)


def _judge(ctx: StageContext, client: MlflowClient) -> dict:
    reg = ctx.registry
    challenger = candidate(ctx, client)
    champion = by_alias(client, reg.model_name, reg.champion_alias)
    if champion is not None and champion.version == challenger.version:
        raise TuneshipError(f"version {challenger.version} is already @{reg.champion_alias}")
    metric = reg.gate.metric
    score = _recorded(challenger, metric)
    champion_score = None
    if champion is not None:
        champion_score = _champion_score(ctx, champion, challenger, metric)
    others = {name: _recorded(challenger, name) for name in reg.gate.floors}
    decision = decide(reg.gate, score, champion_score, others)
    _record(client, reg, challenger, champion, decision)
    return {"version": str(challenger.version), "passed": decision.passed,
            "reason": decision.reason, "champion_before": str(champion.version) if champion else None}


def candidate(ctx: StageContext, client: MlflowClient) -> ModelVersion:
    """The version to judge: the one this pipeline registered (`<work_dir>/registered.json`)
    while no gate has judged it, else @challenger.

    With two pipelines of one model at once, @challenger may already point at the other's
    version; each pipeline still judges its own.
    """
    reg, record = ctx.registry, ctx.work.registered
    if record.is_file():
        mine = json.loads(record.read_text())
        if mine.get("name") == reg.model_name:
            with contextlib.suppress(MlflowException):
                version = client.get_model_version(reg.model_name, str(mine["version"]))
                if "gate.decision" not in version.tags:
                    return version
    challenger = by_alias(client, reg.model_name, reg.challenger_alias)
    if challenger is None:
        raise TuneshipError(f"{reg.model_name} has no @{reg.challenger_alias}: register a model first")
    return challenger


def rollback(ctx: StageContext) -> dict:
    """Move `champion` back to the version it held before the current one."""
    reg = ctx.registry
    client = ctx.client()
    history = _history(client, reg.model_name)
    if len(history) < 2:
        raise TuneshipError(f"{reg.model_name}: no earlier champion to roll back to "
                            f"(history: {history or 'empty'})")
    current, previous = history[-1], history[-2]
    client.set_registered_model_alias(reg.model_name, reg.champion_alias, previous)
    client.set_model_version_tag(reg.model_name, current, "tuneship.rolled_back", "true")
    client.set_registered_model_tag(reg.model_name, HISTORY_TAG, json.dumps(history[:-1]))
    log.info("rolled back @%s: version %s -> %s", reg.champion_alias, current, previous)
    return {"from": current, "to": previous}


def _recorded(version: ModelVersion, metric: str) -> float:
    try:
        return float(version.tags[f"metric.{metric}"])
    except KeyError:
        raise TuneshipError(f"version {version.version} has no recorded '{metric}': the gate "
                            f"metric must be one of eval.metrics") from None


def _champion_score(ctx: StageContext, champion: ModelVersion, challenger: ModelVersion,
                    metric: str) -> float:
    """The champion's score on the challenger's test set (re-scored if the data differ)."""
    if champion.tags.get("data_fingerprint") == challenger.tags.get("data_fingerprint"):
        return _recorded(champion, metric)
    log.info("champion v%s was tested on other data: scoring it on this test split",
             champion.version)
    return ctx.task.rescore(ctx, champion, metric)


def _record(client: MlflowClient, reg: RegistryConfig, challenger: ModelVersion,
            champion: ModelVersion | None, decision: Decision) -> None:
    name, version = reg.model_name, str(challenger.version)
    tags = {"gate.decision": "passed" if decision.passed else "failed",
            "gate.reason": decision.reason,
            "gate.champion_version": str(champion.version) if champion else "none"}
    if decision.champion_score is not None:
        tags["gate.champion_score"] = f"{decision.champion_score:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if not decision.passed:
        log.warning("gate FAILED for %s v%s: %s (stays @%s)", name, version, decision.reason,
                    reg.challenger_alias)
        return
    client.set_registered_model_alias(name, reg.champion_alias, version)
    holder = by_alias(client, name, reg.challenger_alias)
    if holder is not None and str(holder.version) == version:  # not another pipeline's challenger
        client.delete_registered_model_alias(name, reg.challenger_alias)
    if champion is not None:
        client.set_model_version_tag(name, version, "tuneship.previous_champion",
                                     str(champion.version))
    history = _history(client, name)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version]))
    log.info("gate passed: %s v%s is now @%s (%s)", name, version, reg.champion_alias,
             decision.reason)


def _history(client: MlflowClient, name: str) -> list[str]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))
