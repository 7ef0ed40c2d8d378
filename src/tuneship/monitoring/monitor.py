"""One monitoring pass: a window of the inference table against the version's training data.

`run_monitor` is what `make monitor` (pipelines/monitor.py) and a scheduler call. It reads the
window's classified texts, finds the version's training data through its lineage
(reference.py), runs Evidently (drift.py), scores the predictions against feedback labels when
there are enough, and records the outcome three ways: an MLflow run tagged with the version
(metrics, the HTML report, a summary), the version's `drift.*` tags, and a status file the
service turns into its `tuneship_drift_score` gauge (bentos/inference_log.py reads it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from tuneship import tracking
from tuneship.config import RegistryConfig
from tuneship.errors import TuneshipError
from tuneship.monitoring import drift, reference, retrain, table
from tuneship.monitoring.retrain import RetrainConfig

log = logging.getLogger(__name__)
STATUS_FILE = "drift_status.json"  # the name bentos/inference_log.py reads
Signal = Literal["text", "label", "length", "non_letter_share"]


class MonitorConfig(BaseModel):
    """`monitor:` in conf/monitor.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    table_dir: str
    model_name: str
    version: str | None = None       # None: the version holding `alias`
    alias: str = "champion"
    endpoint: str = "/classify"
    window_hours: float = Field(24.0, gt=0)
    end: dt.datetime | None = None   # None: now (UTC)
    min_rows: int = Field(50, ge=10)
    max_rows: int = Field(1000, ge=10)        # the window's most recent texts
    reference_rows: int = Field(1000, ge=10)
    reference_split: str = "train"
    text_threshold: float = Field(0.7, gt=0.5, le=1.0)
    alarm_on: tuple[Signal, ...] = ("text",)
    min_feedback: int = Field(20, ge=1)
    seed: int = 0
    status_file: str | None = None   # None: <table_dir>/drift_status.json
    retrain: RetrainConfig = RetrainConfig()


def run_monitor(cfg: MonitorConfig, reg: RegistryConfig) -> dict[str, Any]:
    """Measure drift for one window; the summary (also logged), or why it could not run."""
    client = tracking.connect(reg)
    mv = reference.find_version(client, cfg.model_name, cfg.version, cfg.alias)
    end = cfg.end or dt.datetime.now(dt.UTC)
    end = end if end.tzinfo else end.replace(tzinfo=dt.UTC)
    start = end - dt.timedelta(hours=cfg.window_hours)
    window = table.texts(table.read_window(Path(cfg.table_dir), start, end, cfg.endpoint))
    served = window[window["model_version"] == str(mv.version)]
    summary: dict[str, Any] = {"model_name": mv.name, "model_version": str(mv.version),
                               "window": [start.isoformat(), end.isoformat()],
                               "texts": len(served), "other_versions": len(window) - len(served)}
    if len(served) < cfg.min_rows:
        return {**summary, "status": "too_few_rows",
                "reason": f"{len(served)} texts from v{mv.version} in the window "
                          f"(min_rows {cfg.min_rows})"}
    current = served.tail(cfg.max_rows).rename(columns={"prediction": "label"})
    ref = reference.training_data(client, mv, cfg.reference_split, cfg.reference_rows, cfg.seed)
    result = drift.measure(ref.frame, current, cfg.text_threshold, cfg.alarm_on)
    summary |= {"status": "alarm" if result.alarm else "ok", "alarm": result.alarm,
                "scores": result.scores, "detected": result.detected,
                "reference": {"split": ref.split, "rows": len(ref.frame),
                              "data_fingerprint": ref.fingerprint, "work_dir": str(ref.work_dir)}}
    labelled = table.with_feedback(served, Path(cfg.table_dir)).dropna(subset=["label"])
    summary["feedback"] = feedback_accuracy(labelled, cfg.min_feedback)
    summary["run_id"] = _log_run(client, mv, cfg, summary, result.html)
    _tag_version(client, mv, summary)
    write_status(Path(cfg.status_file or Path(cfg.table_dir) / STATUS_FILE), summary)
    if cfg.retrain.enabled:
        summary["retrain"] = _retrain(summary, labelled, cfg)
    return summary


def _retrain(summary: dict[str, Any], labelled: pd.DataFrame,
             cfg: MonitorConfig) -> dict[str, Any]:
    planned = retrain.plan(summary, labelled, cfg.retrain, Path(cfg.table_dir) / "retrain")
    if planned["submit"] and not cfg.retrain.dry_run:
        planned["created"] = retrain.submit(planned, cfg.retrain)
    elif planned["submit"]:
        log.warning("retrain dry run: would submit %s", planned["job"])
    return {**planned, "dry_run": cfg.retrain.dry_run}


def feedback_accuracy(labelled: pd.DataFrame, minimum: int) -> dict[str, Any]:
    """Accuracy of the predictions on the texts that received a feedback label."""
    out: dict[str, Any] = {"labelled": len(labelled), "min_feedback": minimum}
    if len(labelled) >= minimum:
        out["accuracy"] = float((labelled["prediction"] == labelled["label"]).mean())
    return out


def _log_run(client: MlflowClient, mv: Any, cfg: MonitorConfig, summary: dict[str, Any],
             html: str) -> str:
    tags = {"tuneship.monitor": "drift", "tuneship.model_name": mv.name,
            "tuneship.model_version": str(mv.version), "drift.alarm": str(summary["alarm"])}
    with mlflow.start_run(run_name=f"monitor-{mv.name}-v{mv.version}", tags=tags) as run:
        mlflow.log_params({"window_start": summary["window"][0],
                           "window_end": summary["window"][1], "endpoint": cfg.endpoint,
                           "text_threshold": cfg.text_threshold,
                           "reference_split": cfg.reference_split,
                           "alarm_on": ",".join(cfg.alarm_on)})
        metrics = {f"drift_{k}": v for k, v in summary["scores"].items()}
        metrics |= {"texts": summary["texts"], "drift_alarm": float(summary["alarm"])}
        if "accuracy" in summary["feedback"]:
            metrics["feedback_accuracy"] = summary["feedback"]["accuracy"]
        mlflow.log_metrics(metrics)
        mlflow.log_text(html, "drift/report.html")
        mlflow.log_dict(summary, "drift/summary.json")
        return run.info.run_id


def _tag_version(client: MlflowClient, mv: Any, summary: dict[str, Any]) -> None:
    tags = {"drift.alarm": summary["alarm"], "drift.checked_at": summary["window"][1],
            "drift.run_id": summary["run_id"], "drift.texts": summary["texts"],
            **{f"drift.{k}": round(v, 6) for k, v in summary["scores"].items()}}
    if "accuracy" in summary["feedback"]:
        tags["drift.feedback_accuracy"] = round(summary["feedback"]["accuracy"], 6)
    for key, value in tags.items():
        client.set_model_version_tag(mv.name, str(mv.version), key, str(value))


def write_status(path: Path, summary: dict[str, Any]) -> None:
    """Atomically replace the status file: what the service exports as `tuneship_drift_score`
    (`text`: the domain classifier's ROC AUC; `label`: 1 - p-value; `alarm`: 0 or 1)."""
    scores = summary["scores"]
    status = {"model_name": summary["model_name"], "model_version": summary["model_version"],
              "checked_at": summary["window"][1], "run_id": summary.get("run_id"),
              "status": summary["status"],
              "scores": {"text": scores["text"], "label": 1.0 - scores["label"],
                         "alarm": float(summary["alarm"])}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".drift-")
    with os.fdopen(fd, "w") as out:
        json.dump(status, out, indent=2)
    os.replace(tmp, path)


def check_config(cfg: MonitorConfig) -> None:
    """Fail before any work when the table directory does not exist."""
    if not Path(cfg.table_dir).is_dir():
        raise TuneshipError(f"monitor.table_dir {cfg.table_dir} does not exist: start the "
                            f"service with its inference log there, or set "
                            f"TUNESHIP_INFERENCE_LOG_DIR")
