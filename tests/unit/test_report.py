"""Slices and calibration of the classification report."""

import numpy as np
import pytest

from tuneship.errors import TuneshipError
from tuneship.evaluation.report import calibration, reliability_png, slice_mask

pytestmark = pytest.mark.unit


def test_ece_is_zero_when_confidence_matches_accuracy_and_the_gap_otherwise(tmp_path):
    refs = np.array([0, 0, 0, 1] * 25)  # 75 % are label 0
    calibrated = np.tile([0.75, 0.25], (100, 1))  # always 0, at 75 %: exactly as often right
    ece, table = calibration(refs, calibrated, bins=10)
    assert ece == pytest.approx(0.0)
    assert table["rows"].sum() == 100 and table.loc[7, "rows"] == 100  # 0.75 falls in [0.7, 0.8)
    overconfident = np.tile([1.0, 0.0], (100, 1))
    ece, _ = calibration(refs, overconfident, bins=10)
    assert ece == pytest.approx(0.25)  # confident 1.0, right 0.75 of the time
    reliability_png(table, ece, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_slice_rules_select_by_length_and_whole_words():
    texts = ["a fine film", "it does n't work", "not good at all , not even the score is",
             "nothing", "a notable film"]
    assert slice_mask(texts, {"max_words": 3}).tolist() == [True, False, False, True, True]
    assert slice_mask(texts, {"min_words": 5}).tolist() == [False, False, True, False, False]
    negation = slice_mask(texts, {"contains": ["not", "n't", "nothing"]})
    assert negation.tolist() == [False, True, True, True, False]  # "notable" is not "not"
    assert slice_mask(["don't"], {"contains": ["n't"]}).tolist() == [True]
    with pytest.raises(TuneshipError, match="unknown rule"):
        slice_mask(texts, {"regex": "x"})
