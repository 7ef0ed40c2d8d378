"""Two-process CPU training with torchrun (gloo): one MLflow run, one output folder, one version,
for both tasks (the train stage is written once)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import ROOT, compose_config
from tuneship.stages import run_stages

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def torchrun_train(experiment: str) -> None:
    """`pipelines/train.py` under torchrun with two CPU processes (one Hydra folder)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "TUNESHIP_RUN_STAMP": "ddp-test"}
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2",
                           str(ROOT / "pipelines" / "train.py"), f"experiment={experiment}",
                           "train.num_threads=1"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_training_behaves_like_one(workspace, lifecycle, monkeypatch):
    cfg = compose_config(["experiment=smoke"])
    run_stages(cfg, ("preprocess",))
    torchrun_train("smoke")
    results = run_stages(cfg, ("evaluate", "register", "promote"))

    work = Path(cfg.paths.work_dir)
    train = json.loads((work / "model" / "train_result.json").read_text())
    assert train["world_size"] == 2
    assert [p.name for p in (work / "hydra").iterdir()] == ["ddp-test"]  # one folder, both ranks
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["tuneship-smoke"])
    assert len(runs) == 1  # not one per rank
    assert runs.iloc[0]["metrics.train.world_size"] == 2
    assert results["register"]["version"] == "1"
    single = lifecycle["runs"][0]["evaluate"]["metrics"]["accuracy"]
    assert abs(results["evaluate"]["metrics"]["accuracy"] - single) <= 0.15


def test_two_process_causal_lm_training_gives_one_run_and_one_version(workspace):
    cfg = compose_config(["experiment=smoke_lm"])
    run_stages(cfg, ("preprocess",))
    torchrun_train("smoke_lm")
    results = run_stages(cfg, ("evaluate", "register"))
    work = Path(cfg.paths.work_dir)
    assert json.loads((work / "model" / "train_result.json").read_text())["world_size"] == 2
    assert (work / "model" / "base_model.json").is_file()  # written once, by rank 0
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["tuneship-smoke_lm"])
    assert len(runs) == 1 and runs.iloc[0]["metrics.train.world_size"] == 2
    versions = mlflow.MlflowClient().search_model_versions("name='tuneship-smoke_lm'")
    assert [str(v.version) for v in versions] == ["1"] and results["register"]["version"] == "1"
