"""`kill -9` in the middle of training, then the same command again: it resumes, not restarts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ARGS = ["experiment=smoke", "train.max_steps=48", "train.eval_steps=4", "train.save_steps=8",
        "train.early_stopping_patience=null"]


def pipeline(workspace: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TUNESHIP_OUTPUT_DIR": str(workspace / "outputs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}",
           "TUNESHIP_ARTIFACTS": str(workspace / "mlartifacts")}
    return subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "run.py"), *ARGS, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def kill_after_first_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not list(ckpt_dir.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_killed_training_resumes_and_registers_once(tmp_path):
    work = tmp_path / "outputs" / "smoke"
    first = pipeline(tmp_path)
    kill_after_first_checkpoint(first, work / "checkpoints")
    killed_run = json.loads((work / "run.json").read_text())["run_id"]

    again = pipeline(tmp_path)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-3000:]
    result = json.loads((work / "model" / "train_result.json").read_text())
    assert result["resumed_from_step"] >= 8  # continued, not started over
    assert result["resumed_from_step"] < 48

    reference = pipeline(tmp_path / "uninterrupted")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    resumed = json.loads((work / "eval" / "report.json").read_text())["metrics"]["accuracy"]
    clean = json.loads((tmp_path / "uninterrupted" / "outputs" / "smoke" / "eval" /
                        "report.json").read_text())["metrics"]["accuracy"]
    assert abs(resumed - clean) <= 0.005

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [v.version for v in client.search_model_versions("name='tuneship-smoke'")] == [1]
    killed = client.get_run(killed_run)
    assert killed.info.status == "FAILED"
    new_run = json.loads((work / "run.json").read_text())["run_id"]
    assert client.get_run(new_run).data.tags["tuneship.follows_failed_run"] == killed_run
