"""Classification report figures: per-class metrics, the confusion matrix, the worst mistakes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, classification_report  # noqa: E402


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
