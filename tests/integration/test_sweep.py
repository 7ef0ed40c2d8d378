"""An Optuna sweep: nested trial runs under one parent; the best trial goes through the gate."""

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_optuna_sweep_registers_the_best_trial(tmp_path):
    env = {**os.environ, "TUNESHIP_OUTPUT_DIR": str(tmp_path / "outputs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "TUNESHIP_ARTIFACTS": str(tmp_path / "mlartifacts")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "run.py"), "-m", "hparams_search=optuna",
         "experiment=smoke", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tuneship-smoke")
    parent = client.search_runs([experiment.experiment_id], "tags.`tuneship.sweep` = 'parent'")[0]
    trials = client.search_runs([experiment.experiment_id],
                                f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == 2
    assert len({t.data.params["train.lr"] for t in trials}) == 2  # the sweeper varied lr
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/trials.csv", "sweep/objective.png"}
    top = max(t.data.metrics["test_accuracy"] for t in trials)
    best = {t.info.run_id for t in trials if t.data.metrics["test_accuracy"] == top}
    version = client.get_model_version("tuneship-smoke", "1")
    assert version.run_id in best
    assert version.tags["gate.decision"] == parent.data.tags["gate.decision"] == "passed"
    assert parent.info.status == "FINISHED"
