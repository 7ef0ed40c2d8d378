"""Classification report figures: per-class metrics, slices, calibration (ECE and a reliability
diagram), the confusion matrix, the worst mistakes."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, classification_report  # noqa: E402

from tuneship.errors import TuneshipError  # noqa: E402


def per_class(refs: np.ndarray, preds: np.ndarray, label_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support for each label."""
    report = classification_report(refs, preds, labels=range(len(label_names)),
                                   target_names=label_names, output_dict=True, zero_division=0)
    return pd.DataFrame({name: report[name] for name in label_names}).T


def slice_mask(texts: list[str], rule: dict) -> np.ndarray:
    """Which texts a slice rule selects: `max_words`, `min_words`, `contains` (whole words)."""
    unknown = set(rule) - {"max_words", "min_words", "contains"}
    if unknown:
        raise TuneshipError(f"eval.slices: unknown rule(s) {sorted(unknown)}; use max_words, "
                            "min_words or contains")
    words = [re.findall(r"[\w']+", t.lower()) for t in texts]
    keep = np.ones(len(texts), dtype=bool)
    if "max_words" in rule:
        keep &= np.array([len(w) <= rule["max_words"] for w in words])
    if "min_words" in rule:
        keep &= np.array([len(w) >= rule["min_words"] for w in words])
    if "contains" in rule:
        wanted = [str(x).lower() for x in rule["contains"]]
        keep &= np.array([any(t == x or (x.startswith("n'") and t.endswith(x))
                              for t in w for x in wanted) for w in words])
    return keep


def calibration(refs: np.ndarray, probs: np.ndarray, bins: int) -> tuple[float, pd.DataFrame]:
    """Expected calibration error of the top label (Guo et al., 2017) and its bins."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == refs
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table = pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:],
                          "rows": np.bincount(which, minlength=bins)})
    table["confidence"] = [confidence[which == b].mean() if n else np.nan
                           for b, n in enumerate(table["rows"])]
    table["accuracy"] = [correct[which == b].mean() if n else np.nan
                         for b, n in enumerate(table["rows"])]
    gaps = (table["accuracy"] - table["confidence"]).abs().fillna(0)
    return float((gaps * table["rows"]).sum() / len(refs)), table


def reliability_png(table: pd.DataFrame, ece: float, path: Path) -> None:
    """The reliability diagram: accuracy against confidence per bin, the diagonal is perfect."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    width = table["bin_high"] - table["bin_low"]
    ax.bar(table["bin_low"], table["accuracy"].fillna(0), width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfectly calibrated")
    ax.set(xlabel="confidence (top label)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Test split: reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
