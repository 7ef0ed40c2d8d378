"""How the classifier cuts a batch into forward passes (bentos/packing.py)."""

import importlib.util
import itertools
import random
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
SPEC = importlib.util.spec_from_file_location(
    "packing", Path(__file__).resolve().parents[2] / "bentos" / "packing.py"
)
packing = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(packing)


def cost(passes, lengths, pass_cost):
    return sum(pass_cost + len(p) * max(lengths[i] for i in p) for p in passes)


def brute_force(lengths, budget, pass_cost):
    """The cheapest cut of the sorted texts into runs, trying every set of cut points."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = None
    for mask in range(2 ** (len(order) - 1)):
        cuts = [0, *(i + 1 for i in range(len(order) - 1) if mask >> i & 1), len(order)]
        passes = [order[a:b] for a, b in itertools.pairwise(cuts)]
        if any(len(p) > 1 and len(p) * max(lengths[i] for i in p) > budget for p in passes):
            continue
        if best is None or cost(passes, lengths, pass_cost) < cost(best, lengths, pass_cost):
            best = passes
    return best


def test_every_text_once_and_within_budget():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(3, 60) for _ in range(rng.randint(1, 64))]
        passes = packing.plan_passes(lengths, 256, 40)
        assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
        assert all(len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 256 for p in passes)


def test_least_cost_matches_brute_force():
    rng = random.Random(1)
    for _ in range(100):
        lengths = [rng.randint(2, 50) for _ in range(rng.randint(1, 9))]
        budget, pass_cost = rng.choice([64, 128, 1024]), rng.choice([0, 10, 40, 500])
        got = cost(packing.plan_passes(lengths, budget, pass_cost), lengths, pass_cost)
        assert got == cost(brute_force(lengths, budget, pass_cost), lengths, pass_cost)


def test_pass_cost_trades_padding_for_fewer_passes():
    lengths = [5, 5, 5, 5, 40]
    assert len(packing.plan_passes(lengths, 1024, 1)) == 2  # cheap passes: the long text alone
    assert len(packing.plan_passes(lengths, 1024, 1000)) == 1  # passes dear: one padded pass
    assert packing.plan_passes([300, 4], 256, 40) == [[1], [0]]  # over budget alone: still served
    assert packing.plan_passes([], 256, 40) == []
