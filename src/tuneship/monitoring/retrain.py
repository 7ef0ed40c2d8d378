"""Back to training: labelled traffic becomes a fine-tuning job when drift is flagged.

Off by default (`monitor.retrain.enabled`). When the monitor raised its alarm and the window
holds at least `min_labels` texts with a feedback label, the texts (as stored: redacted in the
default privacy mode) and their labels are written as a classification CSV, the file the jobs
API accepts (src/tuneship/jobs/README.md), and one job is planned on the configured base
model. `dry_run` (the default once enabled) prints the plan; otherwise the file is uploaded
(`POST /v1/files`) and the job created (`POST /v1/fine_tuning/jobs`). The gate decides as for
any job.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tuneship.errors import TuneshipError


class RetrainConfig(BaseModel):
    """`monitor.retrain:` in conf/monitor.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    enabled: bool = False
    dry_run: bool = True
    base_model: str = "all-minilm-l6-v2"  # an id from the jobs API's allow-list (conf/jobs/)
    jobs_url: str = "http://127.0.0.1:8100/v1"
    api_key_env: str = "TUNESHIP_JOBS_API_KEY"
    min_labels: int = Field(400, ge=1)   # the jobs API refuses files under 400 lines
    n_epochs: int = Field(1, ge=1)


def plan(summary: dict[str, Any], labelled: pd.DataFrame, cfg: RetrainConfig,
         out_dir: Path) -> dict[str, Any]:
    """What would be submitted (and the training file, written), or why nothing is."""
    if not summary.get("alarm"):
        return {"submit": False, "reason": "no drift alarm"}
    rows = labelled.dropna(subset=["text", "label"]).drop_duplicates(["text", "label"])
    if len(rows) < cfg.min_labels:
        return {"submit": False, "reason": f"{len(rows)} labelled texts in the window "
                                           f"(min_labels {cfg.min_labels})"}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{summary['model_name']}-v{summary['model_version']}-{summary['run_id']}.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        writer.writerows(rows[["text", "label"]].itertuples(index=False))
    job = {"model": cfg.base_model, "training_file": str(path),
           "suffix": f"drift-v{summary['model_version']}",
           "method": {"type": "supervised",
                      "supervised": {"hyperparameters": {"n_epochs": cfg.n_epochs}}},
           "metadata": {"source_model": summary["model_name"],
                        "source_version": summary["model_version"],
                        "drift_run_id": summary["run_id"]}}
    return {"submit": True, "rows": len(rows),
            "labels": rows["label"].value_counts().to_dict(), "job": job}


def submit(planned: dict[str, Any], cfg: RetrainConfig) -> dict[str, Any]:
    """Upload the training file and create the job; the job object the API returned."""
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise TuneshipError(f"retrain: set {cfg.api_key_env} to a jobs API key (or keep "
                            f"monitor.retrain.dry_run=true)")
    job = dict(planned["job"])
    path = Path(job["training_file"])
    with httpx.Client(base_url=cfg.jobs_url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        with path.open("rb") as data:
            uploaded = client.post("/files", files={"file": (path.name, data, "text/csv")},
                                   data={"purpose": "fine-tune"})
        _check(uploaded, "upload")
        job["training_file"] = uploaded.json()["id"]
        created = client.post("/fine_tuning/jobs", json=job)
        _check(created, "job creation")
    return created.json()


def _check(answer: httpx.Response, what: str) -> None:
    if answer.status_code >= 400:
        raise TuneshipError(f"retrain: {what} failed ({answer.status_code}): {answer.text[:500]}")
