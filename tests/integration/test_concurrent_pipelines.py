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


def test_each_pipeline_judges_the_version_it_registered(workspace, monkeypatch):
    """The interleaving behind a race seen in CI: A registers, B registers (@challenger moves to
    B's version), A promotes, B promotes. Each judges its own version; nothing is lost."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_config
    from tuneship.stages import run_stages

    cfgs = {}
    for name in ("a", "b"):
        monkeypatch.setenv("TUNESHIP_OUTPUT_DIR", str(workspace / name))
        cfgs[name] = compose_config(["experiment=smoke", "train.max_steps=2",
                                     "train.eval_steps=2", "train.save_steps=2"])
        OmegaConf.resolve(cfgs[name])  # paths fixed now, before the variable changes
        run_stages(cfgs[name], ("preprocess", "train", "evaluate", "register"))
    judged = {name: run_stages(cfgs[name], ("promote",))["promote"] for name in ("a", "b")}
    assert (judged["a"]["version"], judged["b"]["version"]) == ("1", "2")
    assert judged["a"]["passed"] and judged["b"]["champion_before"] == "1"  # B met A's v1
    client = MlflowClient()
    champion = client.get_model_version_by_alias("tuneship-smoke", "champion").version
    assert str(champion) == ("2" if judged["b"]["passed"] else "1")
    for version in ("1", "2"):  # both judged, each with its decision recorded
        assert "gate.decision" in client.get_model_version("tuneship-smoke", version).tags
