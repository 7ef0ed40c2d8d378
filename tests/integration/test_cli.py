"""The entry points turn user mistakes into one clear line and exit code 2 — no traceback."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def run_pipeline(workspace, *overrides: str, script: str = "run.py") -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNESHIP_OUTPUT_DIR": str(workspace / "outputs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}"}
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / script), *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.source=/nonexistent/train.csv"], "data file not found: /nonexistent/train.csv"),
        (["data.text_column=review"], "column(s) ['review'] not found"),
        (["data.label_names=[neg]"], "unknown label 1"),
        (["train.lr=abc"], "bad config value: train.lr"),
    ],
    ids=["missing-file", "wrong-column", "unknown-label", "bad-override"],
)
def test_user_errors_are_one_clear_line(tmp_path, overrides, message):
    result = run_pipeline(tmp_path, "experiment=smoke", *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "smoke" / "model").exists()  # failed before any training


def test_unknown_group_and_key_are_hydra_messages(tmp_path):
    for override, message in (("experiment=nope", "Could not find 'experiment/nope'"),
                              ("train.learning_rate=1", "Could not override 'train.learning_rate'")):
        result = run_pipeline(tmp_path, override)
        assert result.returncode == 1
        assert message in result.stderr and "Traceback" not in result.stderr


def test_stage_out_of_order_says_what_to_run(tmp_path):
    result = run_pipeline(tmp_path, "experiment=smoke", script="eval.py")
    assert result.returncode == 2
    assert "run the preprocess stage first" in result.stderr
