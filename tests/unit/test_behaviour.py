"""Behaviour suites: generated from the templates in conf/behaviour/, scored against predictors
whose behaviour is known (a keyword model passes, a broken constant model fails)."""

from pathlib import Path

import numpy as np
import pytest

from tuneship.errors import TuneshipError
from tuneship.evaluation.behaviour import load_suites, run_suites

pytestmark = pytest.mark.unit
CONF = Path(__file__).resolve().parents[2] / "conf" / "behaviour"
SST2 = ["negative", "positive"]
POSITIVE = ("good", "great", "wonderful", "excellent", "brilliant", "delightful", "moving",
            "charming", "loved")


def keyword_model(texts: list[str]) -> np.ndarray:
    """Positive iff a positive word appears and no negation: what the suites ask for."""
    out = []
    for text in texts:
        words = text.lower().replace(".", " ").replace("!", " ").split()
        pos = any(w in POSITIVE for w in words) and "not" not in words
        score = 0.9 if pos else 0.1
        if pos and "very" in words:
            score = 0.95
        out.append([1 - score, score])
    return np.array(out)


def always_positive(texts: list[str]) -> np.ndarray:
    return np.tile([0.2, 0.8], (len(texts), 1))


def test_the_sst2_suites_have_over_100_cases_of_every_kind():
    suites = load_suites(CONF / "sst2.yaml", SST2)
    assert sum(len(s.cases) for s in suites) >= 100
    assert {s.kind for s in suites} == {"mft", "inv", "dir"}
    assert load_suites(CONF / "sst2.yaml", SST2)[0].cases == suites[0].cases  # seeded
    typos = next(s for s in suites if s.name == "inv_typos")
    assert all(len(c) == 2 and c[0] != c[1] and len(c[0]) == len(c[1]) for c in typos.cases)


def test_a_model_that_behaves_passes_and_a_broken_one_fails():
    good = run_suites(load_suites(CONF / "sst2.yaml", SST2), keyword_model, SST2)
    assert all(r["pass_rate"] == 1.0 for name, r in good.items() if name != "inv_typos"), good
    assert 0 < good["inv_typos"]["pass_rate"] < 1  # a keyword model misses misspelt keywords
    broken = run_suites(load_suites(CONF / "sst2.yaml", SST2), always_positive, SST2)
    assert broken["mft_negative"]["pass_rate"] == 0.0
    assert broken["mft_negative"]["failures"]  # examples to read
    assert broken["mft_positive"]["pass_rate"] == 1.0
    assert broken["dir_negation"]["pass_rate"] == 1.0  # constant scores never fall


def test_ag_news_minimum_functionality_suites_load():
    suites = load_suites(CONF / "ag_news.yaml", ["World", "Sports", "Business", "Sci/Tech"])
    assert {s.label for s in suites} == {"World", "Sports", "Business", "Sci/Tech"}
    assert all(s.kind == "mft" and s.cases for s in suites)


def test_bad_suite_files_are_clear_errors(tmp_path):
    with pytest.raises(TuneshipError, match="not found"):
        load_suites(tmp_path / "none.yaml", SST2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("suites: [{name: x, type: mft, label: neutral, templates: ['a']}]")
    with pytest.raises(TuneshipError, match="label 'neutral' is not one of"):
        load_suites(bad, SST2)
    bad.write_text("suites: [{name: x, type: mft, label: positive, templates: ['{adj}']}]")
    with pytest.raises(TuneshipError, match=r"no lexicon for slot\(s\) \['adj'\]"):
        load_suites(bad, SST2)
