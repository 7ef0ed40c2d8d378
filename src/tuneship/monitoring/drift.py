"""Drift of served traffic against the training data, measured by Evidently.

- Text: Evidently's domain classifier (`abs_text_content_drift`): a model trained to tell
  reference texts from current ones; its ROC AUC is the score (0.5: indistinguishable) and
  drift is flagged above `text_threshold`.
- Text descriptors: length and share of non-letter characters per text, each compared with
  Evidently's default test for numbers (K-S p-value below 0.05 flags it).
- Labels: the predicted labels' distribution against the training labels (Z-test for two
  labels, chi-square for more: Evidently's default for categories).

The alarm is text drift alone by default: descriptors follow the data's shape, which may differ
by construction (SST-2 trains on phrases and is served whole sentences), and label shifts are
reported as their own signal (`alarm_on` names what raises the alarm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tuneship.monitoring.evidently_compat import evidently

DESCRIPTORS = ("length", "non_letter_share")


@dataclass
class DriftResult:
    """Scores and verdicts per signal (`text`, `label`, `length`, ...) and the HTML report."""

    scores: dict[str, float]
    detected: dict[str, bool]
    alarm: bool
    html: str = field(repr=False)
    rows: dict[str, int] = field(default_factory=dict)


def measure(reference: pd.DataFrame, current: pd.DataFrame, text_threshold: float,
            alarm_on: tuple[str, ...] = ("text",)) -> DriftResult:
    """Compare `current` (`text`, `label`) with `reference` (the same columns)."""
    evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.descriptors import NonLetterCharacterPercentage, TextLength
    from evidently.metrics import ValueDrift

    definition = DataDefinition(text_columns=["text"], categorical_columns=["label"])
    descriptors = [TextLength("text", alias="length"),
                   NonLetterCharacterPercentage("text", alias="non_letter_share")]

    def dataset(frame: pd.DataFrame) -> Any:
        return Dataset.from_pandas(frame[["text", "label"]].reset_index(drop=True),
                                   data_definition=definition, descriptors=descriptors)

    metrics = {"text": ValueDrift(column="text", method="abs_text_content_drift",
                                  threshold=text_threshold),
               "label": ValueDrift(column="label"),
               **{name: ValueDrift(column=name) for name in DESCRIPTORS}}
    snapshot = Report(list(metrics.values()), include_tests=True).run(
        dataset(current), dataset(reference))
    scores, detected = _verdicts(snapshot.dict(), metrics)
    return DriftResult(scores, detected, any(detected[k] for k in alarm_on),
                       snapshot.get_html_str(as_iframe=False),
                       {"reference": len(reference), "current": len(current)})


def _verdicts(result: dict[str, Any], metrics: dict[str, Any]) -> tuple[dict[str, float],
                                                                        dict[str, bool]]:
    """Each metric's value and whether its test failed, matched by column name."""
    names = {metric.column: key for key, metric in metrics.items()}
    scores = {names[m["config"]["column"]]: float(m["value"]) for m in result["metrics"]
              if m["config"].get("column") in names}
    detected = {}
    for test in result["tests"]:
        column = test["name"].removeprefix("Value Drift for column ")
        if column in names:
            detected[names[column]] = str(test["status"]).endswith("FAIL")
    missing = set(metrics) - set(scores) - set(detected)
    if missing:
        raise RuntimeError(f"Evidently returned no result for {sorted(missing)}")
    return scores, detected
