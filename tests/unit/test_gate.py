"""The promotion gate's decisions."""

import pytest

from tuneship.config import GateConfig
from tuneship.registry.gate import decide

pytestmark = pytest.mark.unit
GATE = GateConfig(metric="accuracy", min=0.85, min_improvement=0.01)


@pytest.mark.parametrize(
    ("score", "champion", "passed", "reason"),
    [
        (0.90, None, True, "no champion yet"),
        (0.80, None, False, "below the floor 0.85"),
        (0.92, 0.90, True, "beats champion"),
        (0.905, 0.90, False, "under the required 0.01"),
        (0.88, 0.90, False, "under the required"),
        (0.80, 0.70, False, "below the floor"),
    ],
)
def test_decisions(score, champion, passed, reason):
    decision = decide(GATE, score, champion)
    assert decision.passed is passed
    assert reason in decision.reason


def test_lower_is_better_and_ceiling():
    gate = GateConfig(metric="perplexity", max=50, min_improvement=1.0, higher_is_better=False)
    assert decide(gate, 20.0, 25.0).passed
    assert not decide(gate, 24.5, 25.0).passed
    assert "above the ceiling" in decide(gate, 60.0, None).reason


def test_zero_margin_still_refuses_a_worse_model():
    gate = GateConfig(metric="accuracy", min_improvement=0.0)
    assert decide(gate, 0.5, 0.5).passed
    assert not decide(gate, 0.49, 0.5).passed
