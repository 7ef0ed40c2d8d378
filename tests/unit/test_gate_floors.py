"""`registry.gate.floors`: other recorded metrics with their own minimums (causal-LM gate)."""

import pytest

from tuneship.config import GateConfig
from tuneship.registry.gate import decide

pytestmark = pytest.mark.unit
LM_GATE = GateConfig(metric="perplexity", higher_is_better=False,
                     floors={"perplexity_reduction": 0.3})


@pytest.mark.parametrize(
    ("score", "champion", "reduction", "passed", "reason"),
    [
        (20.0, None, 0.45, True, "no champion yet"),
        (20.0, None, 0.12, False, "perplexity_reduction=0.1200 is below the floor 0.3"),
        (20.0, None, None, False, "perplexity_reduction=missing"),
        (20.0, 21.0, 0.45, True, "beats champion 21.0000"),
        (22.0, 21.0, 0.45, False, "under the required"),  # lower is better
        (20.0, 21.0, 0.10, False, "below the floor 0.3"),  # floor before the champion
    ],
)
def test_floors_and_champion(score, champion, reduction, passed, reason):
    others = {} if reduction is None else {"perplexity_reduction": reduction}
    decision = decide(LM_GATE, score, champion, others)
    assert decision.passed is passed
    assert reason in decision.reason


def test_no_floors_keeps_the_old_behaviour():
    assert decide(GateConfig(metric="accuracy"), 0.9, None).passed
