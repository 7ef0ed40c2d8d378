"""The preprocess stage: prepare the task's dataset, save it, open the pipeline's MLflow run."""

from __future__ import annotations

import mlflow
import mlflow.data

from tuneship.context import StageContext
from tuneship.tracking_params import config_params

CONTEXTS = {"train": "training", "test": "testing"}


def run(ctx: StageContext) -> dict:
    """Prepare and save the data, open the run, log config, stats, fingerprint and inputs."""
    tokenizer = ctx.task.tokenizer(ctx)
    prepared = ctx.task.prepare(ctx, tokenizer)
    ctx.work.save_prepared(prepared)
    stats = prepared.stats
    ctx.start_run(run_name=f"{ctx.experiment}-{stats['fingerprint'][:8]}")
    with ctx.stage_run("preprocess"):
        mlflow.log_params(config_params(ctx.cfg))
        mlflow.set_tags({"data_fingerprint": stats["fingerprint"], "dataset": stats["dataset"],
                         "task": ctx.task.name})
        mlflow.log_metrics(ctx.task.data_metrics(stats))
        mlflow.log_dict(stats, "data/stats.json")
        for split, frame in ctx.task.logged_inputs(prepared).items():
            mlflow.log_input(mlflow.data.from_pandas(
                frame, source=ctx.data.source, name=f"{stats['dataset']}-{split}",
                digest=stats["fingerprint"], targets="label" if "label" in frame else None),
                context=CONTEXTS[split])
    return stats
