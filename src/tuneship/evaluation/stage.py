"""The evaluate stage: test-split scores and reports, saved to `<work_dir>/eval` and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
from omegaconf import DictConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tuneship.config import EvalConfig, RegistryConfig, section
from tuneship.data.columns import column
from tuneship.data.preprocess import load_prepared
from tuneship.errors import TuneshipError
from tuneship.evaluation import report
from tuneship.evaluation.predict import predict_proba
from tuneship.registry.tracking import stage_run

REPORT_FILE = "report.json"


def run(cfg: DictConfig) -> dict:
    """Score `<work_dir>/model` on the test split; log metrics and reports to the pipeline run."""
    ev = section(cfg, "eval", EvalConfig)
    reg = section(cfg, "registry", RegistryConfig)
    work_dir = Path(cfg.paths.work_dir)
    prepared = load_prepared(work_dir / "data")
    model_dir = work_dir / "model"
    if not (model_dir / "config.json").is_file():
        raise TuneshipError(f"no trained model in {model_dir}: run the train stage first")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    test = prepared.splits["test"]
    probs = predict_proba(model, tokenizer, test, ev.batch_size)
    result = build_report(ev, np.asarray(column(test, "label")), probs,
                          column(test, "text"),
                          prepared.stats["label_names"], cfg.seed, work_dir / "eval")
    result["data_fingerprint"] = prepared.stats["fingerprint"]
    (work_dir / "eval" / REPORT_FILE).write_text(json.dumps(result, indent=2))
    with stage_run(reg, work_dir, "evaluate"):
        mlflow.log_metrics({f"test_{k}": v for k, v in result["metrics"].items()})
        low, high = result["interval"]
        mlflow.log_metrics({f"test_{ev.headline}_ci_low": low, f"test_{ev.headline}_ci_high": high})
        mlflow.log_artifacts(str(work_dir / "eval"), artifact_path="eval")
    return result


def build_report(ev: EvalConfig, refs: np.ndarray, probs: np.ndarray, texts: list[str],
                 label_names: list[str], seed: int, out_dir: Path) -> dict:
    """Compute every figure and write the per-class CSV, mistakes CSV and confusion PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = probs.argmax(axis=1)
    metrics = report.overall(ev.metrics, refs, preds, ev.average)
    if ev.headline not in metrics:
        raise TuneshipError(f"eval.headline={ev.headline} is not among eval.metrics={ev.metrics}")
    interval = report.bootstrap_interval(ev.headline, refs, preds, ev.average,
                                         ev.bootstrap_samples, ev.confidence, seed)
    classes = report.per_class(refs, preds, label_names)
    classes.to_csv(out_dir / "per_class.csv")
    report.confusion_png(refs, preds, label_names, out_dir / "confusion_matrix.png")
    report.worst_mistakes(texts, refs, probs, label_names, ev.worst_examples).to_csv(
        out_dir / "worst_mistakes.csv", index=False)
    return {"metrics": metrics, "headline": ev.headline, "interval": list(interval),
            "confidence": ev.confidence, "rows": int(len(refs)),
            "per_class": classes.round(4).to_dict(orient="index")}
