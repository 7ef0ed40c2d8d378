"""Two pipelines at once against one MLflow store: distinct versions, exactly one champion."""

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_pipelines_at_once(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = []
    for name in ("a", "b"):
        env = {**os.environ, "TUNESHIP_OUTPUT_DIR": str(tmp_path / name),
               "MLFLOW_TRACKING_URI": store, "TUNESHIP_ARTIFACTS": str(tmp_path / "mlartifacts")}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "run.py"),
                                       "experiment=smoke", f"seed={ord(name)}"],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]

    client = MlflowClient(store)
    versions = client.search_model_versions("name='tuneship-smoke'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert len({v.run_id for v in versions}) == 2
    champions = [v for v in versions if "champion" in client.get_model_version(
        "tuneship-smoke", v.version).aliases]
    assert len(champions) == 1
    assert champions[0].tags.get("gate.decision") == "passed"
    for v in versions:  # every run kept all of its metrics
        run = client.get_run(v.run_id)
        assert run.info.status == "FINISHED"
        assert {"test_accuracy", "eval_accuracy", "data.rows_train"} <= set(run.data.metrics)
