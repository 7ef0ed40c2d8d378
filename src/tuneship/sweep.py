"""A Hydra callback that wraps a sweep: one parent MLflow run, then the best trial is registered.

Trials (nested runs, tagged `mlflow.parentRunId`) run preprocess → train → evaluate. When the
sweep ends, the callback logs a summary table and an objective-per-trial plot to the parent run,
registers the best trial's model (@challenger) and runs the normal promotion gate.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tuneship import settings  # noqa: F401  (resolvers)
from tuneship.config import EvalConfig, RegistryConfig, section
from tuneship.tracking import PARENT_RUN_VAR, connect

log = logging.getLogger(__name__)


class SweepCallback(Callback):
    """Parent run at the start of a multirun; summary, registration and gate at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        reg = section(config, "registry", RegistryConfig)
        client = connect(reg)
        experiment = client.get_experiment_by_name(reg.experiment)
        parent = client.create_run(experiment.experiment_id, run_name=f"{config.experiment_name}-sweep",
                                   tags={"tuneship.sweep": "parent"})
        os.environ[PARENT_RUN_VAR] = parent.info.run_id
        log.info("sweep parent run %s", parent.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.pop(PARENT_RUN_VAR, None)
        if parent is None:
            return
        reg = section(config, "registry", RegistryConfig)
        metric = f"test_{section(config, 'eval', EvalConfig).headline}"
        client = connect(reg)
        trials = summarize(client, parent, metric)
        if trials.empty:
            client.set_terminated(parent, "FAILED")
            return
        higher = reg.gate.higher_is_better  # perplexity sweeps minimise
        best = trials.iloc[trials[metric].idxmax() if higher else trials[metric].idxmin()]
        log_summary(client, parent, trials, metric, higher)
        results = promote_best(config, Path(best["work_dir"]))
        client.set_tag(parent, "tuneship.best_trial_run", best["run_id"])
        client.set_tag(parent, "tuneship.registered_version", results["register"]["version"])
        client.set_tag(parent, "gate.decision", "passed" if results["promote"]["passed"] else "failed")
        client.set_terminated(parent, "FINISHED")


def summarize(client: MlflowClient, parent: str, metric: str) -> pd.DataFrame:
    """One row per finished trial: run id, work dir, its swept params and the objective."""
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'", order_by=["start_time ASC"])
    rows = [{"trial": i, "run_id": r.info.run_id, "work_dir": r.data.tags["tuneship.work_dir"],
             "train.lr": r.data.params.get("train.lr"),
             "train.warmup_ratio": r.data.params.get("train.warmup_ratio"),
             metric: r.data.metrics.get(metric)}
            for i, r in enumerate(runs)]
    frame = pd.DataFrame(rows)
    return frame.dropna(subset=[metric]).reset_index(drop=True) if not frame.empty else frame


def log_summary(client: MlflowClient, parent: str, trials: pd.DataFrame, metric: str,
                higher: bool = True) -> None:
    """The trials table (CSV) and objective vs trial (PNG) as artifacts of the parent run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        trials.drop(columns=["work_dir"]).to_csv(Path(tmp) / "trials.csv", index=False)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(trials["trial"], trials[metric], "o-", label=metric)
        best = trials[metric].cummax() if higher else trials[metric].cummin()
        ax.plot(trials["trial"], best, "--", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(tmp) / "objective.png", dpi=110)
        plt.close(fig)
        client.log_artifacts(parent, tmp, artifact_path="sweep")
    client.log_metric(parent, f"best_{metric}",
                      float(trials[metric].max() if higher else trials[metric].min()))


def promote_best(config: DictConfig, work_dir: Path) -> dict:
    """Register the best trial's model and run the gate, as `make pipeline` would."""
    from tuneship.stages import run_stages

    plain = OmegaConf.to_container(config, resolve=False)
    plain.pop("hydra", None)
    cfg = OmegaConf.create(plain)
    cfg.paths.work_dir = str(work_dir)
    mlflow.end_run()
    return run_stages(cfg, ("register", "promote"))
