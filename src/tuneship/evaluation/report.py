"""Metrics, a bootstrap interval, per-class figures, a confusion matrix and the worst mistakes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    f1_score,
    precision_score,
    recall_score,
)

from tuneship.metrics import load_combined  # noqa: E402

_SCORERS = {
    "accuracy": lambda y, p, avg: accuracy_score(y, p),
    "f1": lambda y, p, avg: f1_score(y, p, average=avg, zero_division=0),
    "precision": lambda y, p, avg: precision_score(y, p, average=avg, zero_division=0),
    "recall": lambda y, p, avg: recall_score(y, p, average=avg, zero_division=0),
}


def overall(names: list[str], refs: np.ndarray, preds: np.ndarray, average: str) -> dict:
    """The configured metrics through the in-repo `evaluate` modules."""
    scores: dict[str, float] = {}
    if "accuracy" in names:
        scores |= load_combined(["accuracy"]).compute(predictions=preds, references=refs)
    averaged = [n for n in names if n != "accuracy"]
    if averaged:
        scores |= load_combined(averaged).compute(predictions=preds, references=refs,
                                                  average=average, zero_division=0)
    return {k: float(v) for k, v in scores.items()}


def bootstrap_interval(metric: str, refs: np.ndarray, preds: np.ndarray, average: str,
                       samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric` over resampled test rows."""
    if samples == 0:
        return (float("nan"), float("nan"))
    scorer = _SCORERS[metric]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(refs), size=(samples, len(refs)))
    values = [scorer(refs[i], preds[i], average) for i in idx]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def per_class(refs: np.ndarray, preds: np.ndarray, label_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support for each label."""
    report = classification_report(refs, preds, labels=range(len(label_names)),
                                   target_names=label_names, output_dict=True, zero_division=0)
    return pd.DataFrame({name: report[name] for name in label_names}).T


def confusion_png(refs: np.ndarray, preds: np.ndarray, label_names: list[str], path: Path) -> None:
    """Save the confusion matrix (counts) as a PNG."""
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 3, 1.2 * len(label_names) + 2.5))
    ConfusionMatrixDisplay.from_predictions(refs, preds, labels=range(len(label_names)),
                                            display_labels=label_names, ax=ax, colorbar=False,
                                            cmap="Blues", values_format="d")
    ax.set_title("Test split: confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def worst_mistakes(texts: list[str], refs: np.ndarray, probs: np.ndarray,
                   label_names: list[str], k: int) -> pd.DataFrame:
    """The `k` misclassified rows the model was most confident about."""
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != refs)
    confidence = probs[wrong, preds[wrong]]
    top = wrong[np.argsort(-confidence)][:k]
    return pd.DataFrame({
        "text": [texts[i] for i in top],
        "label": [label_names[refs[i]] for i in top],
        "predicted": [label_names[preds[i]] for i in top],
        "confidence": probs[top, preds[top]].round(4),
    })
