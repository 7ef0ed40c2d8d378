"""The `smoke` experiment end to end against a real (temporary) MLflow store.

Three pipeline runs: v1 becomes champion; v2 fails a strict gate and stays challenger;
v3 (same seed and data as v1, so the same score) passes a zero-margin gate; rollback restores v1.
"""

import json
from pathlib import Path

import mlflow
import pytest

from tests.conftest import compose_config
from tuneship.errors import TuneshipError
from tuneship.stages import run_stages
from tuneship.workdir import WorkDir

pytestmark = pytest.mark.integration
NAME = "tuneship-smoke"


def test_first_version_becomes_champion(lifecycle):
    first = lifecycle["runs"][0]
    assert first["register"]["version"] == "1"
    assert first["promote"] == {"version": "1", "passed": True, "champion_before": None,
                                "reason": first["promote"]["reason"]}
    assert "no champion yet" in first["promote"]["reason"]


def test_run_holds_params_metrics_artifacts_and_lineage(lifecycle):
    client = lifecycle["client"]
    run_id = lifecycle["runs"][0]["register"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {"test_accuracy", "test_f1", "test_accuracy_ci_low", "data.rows_train",
            "eval_accuracy", "train.train_runtime"} <= set(run.data.metrics)
    assert run.data.params["train.max_steps"] == "12"
    assert len(run.data.tags["data_fingerprint"]) == 16
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"eval", "model_card.md", "config", "data"} <= artifacts
    evals = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert "eval/confusion_matrix.png" in evals and "eval/worst_mistakes.csv" in evals
    history = client.get_metric_history(run_id, "loss")
    assert len(history) >= 2  # the training curve, step by step


def test_version_tags_and_card(lifecycle):
    version = lifecycle["client"].get_model_version(NAME, "1")
    assert {"run_id", "git_commit", "data_fingerprint", "metric.accuracy"} <= set(version.tags)
    assert version.description.startswith(f"# Model card: {NAME} v1")


def test_strict_gate_keeps_the_challenger(lifecycle):
    second = lifecycle["runs"][1]["promote"]
    assert second["version"] == "2" and second["passed"] is False
    version = lifecycle["client"].get_model_version(NAME, "2")
    assert version.tags["gate.decision"] == "failed"
    assert "under the required 0.5" in version.tags["gate.reason"]
    assert "champion" not in version.aliases  # (the later v3 took @challenger over)


def test_equal_score_passes_zero_margin_and_rollback(lifecycle):
    client = lifecycle["client"]
    third = lifecycle["runs"][2]["promote"]
    assert third["passed"] is True and third["champion_before"] == "1"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"
    cfg = compose_config(["experiment=smoke"])
    assert run_stages(cfg, ("rollback",))["rollback"] == {"from": "3", "to": "1"}
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    with pytest.raises(TuneshipError, match="no earlier champion"):
        run_stages(cfg, ("rollback",))


def test_champion_labels_new_sentences(lifecycle):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(["a wonderful, moving film", "a boring waste of time"])
    assert list(out["label"]) and set(out["label"]) <= {"negative", "positive"}
    assert ((out["score"] > 0) & (out["score"] <= 1)).all()


def test_promote_without_challenger_is_a_clear_error(lifecycle):
    with pytest.raises(TuneshipError, match="has no @challenger"):
        run_stages(compose_config(["experiment=smoke", "registry.model_name=never-registered"]),
                   ("promote",))


def test_a_killed_run_is_marked_failed_and_followed(lifecycle):
    client = lifecycle["client"]
    work_dir = Path(compose_config(["experiment=smoke"]).paths.work_dir)
    experiment = client.get_experiment_by_name("tuneship-smoke")
    killed = client.create_run(experiment.experiment_id).info.run_id  # left RUNNING
    (WorkDir(work_dir).run_file).write_text(json.dumps({"run_id": killed}))
    run_stages(compose_config(["experiment=smoke"]), ("preprocess",))
    assert client.get_run(killed).info.status == "FAILED"
    new_id = json.loads(WorkDir(work_dir).run_file.read_text())["run_id"]
    assert client.get_run(new_id).data.tags["tuneship.follows_failed_run"] == killed


def test_a_gate_floor_on_a_behaviour_suite_blocks_promotion(workspace):
    """The smoke model calls everything negative: a floor on the positive MFT suite fails it."""
    cfg = compose_config(["experiment=smoke", "+registry.gate.floors.behaviour_mft_positive=0.5"])
    results = run_stages(cfg)
    assert results["evaluate"]["metrics"]["behaviour_mft_positive"] < 0.5
    assert results["promote"]["passed"] is False
    assert "behaviour_mft_positive" in results["promote"]["reason"]
    assert Path(cfg.paths.work_dir, "eval", "behaviour.json").is_file()
