"""The promotion gate: absolute bounds, then a margin over the current champion."""

from __future__ import annotations

from dataclasses import dataclass

from tuneship.config import GateConfig


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on one challenger."""

    passed: bool
    reason: str
    score: float
    champion_score: float | None = None


def decide(gate: GateConfig, score: float, champion_score: float | None,
           others: dict[str, float] | None = None) -> Decision:
    """Pass when `score` is within bounds, `others` reach `gate.floors` and `score` beats
    `champion_score` by `min_improvement`."""
    name = gate.metric
    if gate.min is not None and score < gate.min:
        return Decision(False, f"{name}={score:.4f} is below the floor {gate.min}", score,
                        champion_score)
    if gate.max is not None and score > gate.max:
        return Decision(False, f"{name}={score:.4f} is above the ceiling {gate.max}", score,
                        champion_score)
    for other, floor in gate.floors.items():
        value = (others or {}).get(other)
        if value is None or value < floor:
            shown = "missing" if value is None else f"{value:.4f}"
            return Decision(False, f"{other}={shown} is below the floor {floor}", score,
                            champion_score)
    if champion_score is None:
        return Decision(True, f"{name}={score:.4f} meets the bounds; no champion yet", score)
    gain = score - champion_score if gate.higher_is_better else champion_score - score
    if gain < gate.min_improvement or (gate.min_improvement == 0 and gain < 0):
        return Decision(False, f"{name}={score:.4f} vs champion {champion_score:.4f}: gain "
                        f"{gain:+.4f} is under the required {gate.min_improvement}", score,
                        champion_score)
    return Decision(True, f"{name}={score:.4f} beats champion {champion_score:.4f} by "
                    f"{gain:+.4f} (required {gate.min_improvement})", score, champion_score)
