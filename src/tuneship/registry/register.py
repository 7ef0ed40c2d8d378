"""The register stage: the task logs the model; this stage registers it with lineage tags, the
redacted config and a model card, and marks it `challenger`."""

from __future__ import annotations

import logging

import mlflow
from omegaconf import OmegaConf

from tuneship.context import StageContext
from tuneship.redact import redact
from tuneship.registry.card import model_card
from tuneship.registry.lineage import git_commit
from tuneship.settings import project_root

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    """Log `<work_dir>/model` as a new registered version with lineage tags and a card."""
    work, reg = ctx.work, ctx.registry
    report = work.read(work.report, "run the evaluate stage first")
    train = work.read(work.train_result, "run the train stage first")
    prepared = work.load_prepared()
    stats = prepared.stats
    with ctx.stage_run("register") as run:
        lineage = {"run_id": run.info.run_id, "git_commit": git_commit(project_root()),
                   "data_fingerprint": stats["fingerprint"], "data_source": stats["source"],
                   "base_model": ctx.model.name, "experiment": ctx.experiment}
        logged = ctx.task.log_model(ctx, prepared, lineage, report, train)
        lineage |= logged.lineage
        version = str(logged.info.registered_model_version)
        card = model_card(reg.model_name, version, ctx.task.name, lineage, stats, report, train,
                          logged.card)
        mlflow.log_text(card, "model_card.md")
        mlflow.log_dict(redact(OmegaConf.to_container(ctx.cfg, resolve=True)),
                        "config/resolved.yaml")
    client = ctx.client()
    tags = {**lineage, **{f"metric.{k}": f"{v:.6f}" for k, v in report["metrics"].items()},
            "eval.rows": str(report["rows"])}
    for key, value in tags.items():
        client.set_model_version_tag(reg.model_name, version, key, redact(str(value), key))
    client.update_model_version(reg.model_name, version, description=card)
    client.set_registered_model_alias(reg.model_name, reg.challenger_alias, version)
    result = {"name": reg.model_name, "version": version, "run_id": lineage["run_id"],
              "model_uri": f"models:/{reg.model_name}/{version}", **logged.result}
    work.write(work.registered, result)
    log.info("registered %s version %s as @%s", reg.model_name, version, reg.challenger_alias)
    return result
