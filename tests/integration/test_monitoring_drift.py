"""Drift through the whole chain: a real inference table, lineage in a real MLflow store, Evidently.

The SST-2 data is preprocessed for real (its run records the work dir, as `make pipeline`
does) and a registered version carries the lineage tags `register` writes; no model is trained,
so the table's predicted labels are stand-ins written as the classifier answers them (the text
is what the drift check is about). Six one-hour windows of 150 requests are written through
the service's own writer (bentos/inference_log.py): AG News texts, then five of held-out SST-2
sentences (the GLUE dev set, never in the training split).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import ROOT, isolated_env
from tuneship.config import RegistryConfig
from tuneship.monitoring.monitor import MonitorConfig, run_monitor
from tuneship.monitoring.retrain import RetrainConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DATA = ROOT.parent / "shared" / "data"
NAME = "tuneship-sst2_minilm"
WINDOW = 150
START = dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)

sys.path.insert(0, str(ROOT / "bentos"))
try:
    inference_log, privacy = (importlib.import_module(m) for m in ("inference_log", "privacy"))
finally:
    sys.path.remove(str(ROOT / "bentos"))


def _register(tmp: Path, env: dict[str, str]) -> tuple[str, RegistryConfig]:
    """Preprocess SST-2 under `tmp` and register a version with the lineage tags."""
    done = subprocess.run([sys.executable, "pipelines/preprocess.py", "experiment=sst2_minilm"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp / "outputs" / "sst2_minilm"
    run_id = json.loads((work / "run.json").read_text())["run_id"]
    stats = json.loads((work / "data" / "stats.json").read_text())
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    client.create_registered_model(NAME)
    mv = client.create_model_version(NAME, source=str(work / "model"), run_id=run_id, tags={
        "run_id": run_id, "data_fingerprint": stats["fingerprint"]})
    client.set_registered_model_alias(NAME, "champion", mv.version)
    reg = RegistryConfig(tracking_uri=env["MLFLOW_TRACKING_URI"], experiment="tuneship-monitor",
                         model_name=NAME, artifact_location=str(tmp / "mlartifacts"))
    return str(mv.version), reg


def _write_window(writer, hour: int, texts: list[str], labels: list[str], version: str) -> list:
    """One request per text, stamped inside window `hour`, through the service's writer."""
    ids = []
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        record = inference_log.Captured(f"w{hour}-{i}", "/classify",
                                        (START + dt.timedelta(hours=hour, seconds=i)).timestamp(),
                                        status=200, content_type="application/json")
        record.body += json.dumps({"texts": [text]}).encode()
        record.answer += json.dumps({"predictions": [{"label": label, "score": 0.9}], "model": {
            "name": NAME, "version": version, "alias": "champion", "bento_model": "x"}}).encode()
        assert writer.submit("requests", record)
        ids.append(record.request_id)
    return ids


def test_drift_on_ag_news_and_no_false_alarm_on_held_out_sst2(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    version, reg = _register(tmp_path, env)
    names = {0: "negative", 1: "positive"}
    ag = pd.read_csv(DATA / "ag_news" / "train.csv").sample(WINDOW, random_state=0)
    dev = pd.read_csv(DATA / "sst2" / "dev.tsv", sep="\t", quoting=3).sample(frac=1,
                                                                            random_state=1)
    table = tmp_path / "table"
    writer = inference_log.Writer(table, inference_log.PrivacyMode.REDACTED, 3650, 10_000, 500,
                                  0.5, None)
    ag_labels = [names[x % 2] for x in ag["label"]]
    ag_ids = _write_window(writer, 0, ag["text"].tolist(), ag_labels, version)
    truth = [names[x] for x in dev["label"]]
    predicted = [("negative" if t == "positive" else "positive") if i % 4 == 0 else t
                 for i, t in enumerate(truth)]  # a classifier right 3 times in 4
    first_ids: list[str] = []
    for w in range(5):
        part = slice(w * WINDOW, (w + 1) * WINDOW)
        ids = _write_window(writer, 1 + w, dev["sentence"].tolist()[part], predicted[part],
                            version)
        first_ids = first_ids or ids
    for rid, label in [*zip(first_ids[:40], truth[:40], strict=True),
                       *zip(ag_ids, ag_labels, strict=True)]:
        assert writer.submit("feedback", {"request_id": rid, "label": label, "rating": None,
                                          "comment": None, "time": dt.datetime.now(dt.UTC)})
    writer.close()

    def check(hour: int, **options) -> dict:
        cfg = MonitorConfig(table_dir=str(table), model_name=NAME, window_hours=1,
                            end=START + dt.timedelta(hours=hour + 1), min_rows=100, **options)
        return run_monitor(cfg, reg)

    shifted = check(0, retrain=RetrainConfig(enabled=True, min_labels=100))
    held_out = [check(1 + w) for w in range(5)]
    scores = [round(s["scores"]["text"], 3) for s in held_out]
    print(f"AG News text score {shifted['scores']['text']:.3f}; held-out SST-2 {scores}")
    assert shifted["alarm"] and shifted["scores"]["text"] > 0.85 and shifted["texts"] == WINDOW
    planned = shifted["retrain"]  # the dry run: the labelled AG News traffic, the base model
    assert planned["dry_run"] and planned["submit"] and planned["rows"] == WINDOW
    assert planned["job"]["model"] == "all-minilm-l6-v2"
    assert planned["job"]["metadata"] == {"source_model": NAME, "source_version": version,
                                          "drift_run_id": shifted["run_id"]}
    training = pd.read_csv(planned["job"]["training_file"], keep_default_na=False)
    assert training["text"].tolist() == [privacy.mask_pii(t) for t in ag["text"]]  # as stored
    assert training["label"].tolist() == ag_labels
    false_alarms = sum(s["alarm"] for s in held_out)
    assert false_alarms == 0, held_out
    assert held_out[0]["feedback"] == {"labelled": 40, "min_feedback": 20, "accuracy": 0.75}

    client = MlflowClient(reg.tracking_uri)
    tags = client.get_model_version(NAME, version).tags
    assert tags["drift.alarm"] == "False" and tags["drift.run_id"] == held_out[-1]["run_id"]
    assert float(tags["drift.text"]) == pytest.approx(held_out[-1]["scores"]["text"], abs=1e-6)
    run = client.get_run(shifted["run_id"])
    assert run.data.tags["tuneship.model_version"] == version
    assert run.data.metrics["drift_alarm"] == 1.0
    assert {a.path for a in client.list_artifacts(run.info.run_id, "drift")} == {
        "drift/report.html", "drift/summary.json"}
    status = json.loads((table / "drift_status.json").read_text())
    assert status["model_version"] == version and status["scores"]["alarm"] == 0.0


def test_too_few_rows_gives_no_verdict(tmp_path: Path) -> None:
    table = tmp_path / "table"
    writer = inference_log.Writer(table, inference_log.PrivacyMode.FULL, 3650, 100, 10, 0.2,
                                  None)
    _write_window(writer, 0, ["a fine film"] * 5, ["positive"] * 5, "1")
    writer.close()
    env = isolated_env(tmp_path)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    client.create_registered_model(NAME)
    client.set_registered_model_alias(NAME, "champion", client.create_model_version(
        NAME, source=str(tmp_path)).version)
    reg = RegistryConfig(tracking_uri=env["MLFLOW_TRACKING_URI"], experiment="tuneship-monitor",
                         model_name=NAME)
    summary = run_monitor(MonitorConfig(table_dir=str(table), model_name=NAME, window_hours=1,
                                        end=START + dt.timedelta(hours=1)), reg)
    assert summary["status"] == "too_few_rows" and summary["texts"] == 5
