"""tuneship.metrics against figures the reference implementations publish (scikit-learn
docstrings, sacreBLEU's test suite, rouge-score's tests of ROUGE-1.5.5), plus perplexity by hand."""

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from tuneship import metrics
from tuneship.errors import TuneshipError

pytestmark = pytest.mark.unit

Y_TRUE = [0, 1, 2, 2, 1, 0, 1, 2, 0, 1]
Y_PRED = [0, 2, 2, 2, 1, 0, 0, 1, 0, 1]
NAMES = ("accuracy", "precision", "recall", "f1")


# --- classification: scikit-learn ---------------------------------------------------------------

def test_accuracy_published():
    # sklearn.metrics.accuracy_score docstring (scikit-learn 1.9, "Examples"):
    #   y_pred = [0, 2, 1, 3]; y_true = [0, 1, 2, 3]; accuracy_score(y_true, y_pred) -> 0.5
    assert metrics.score("accuracy", [0, 1, 2, 3], [0, 2, 1, 3]) == 0.5


# The docstrings of precision_score / recall_score / f1_score (scikit-learn 1.9, "Examples")
# share y_true = [0, 1, 2, 0, 1, 2], y_pred = [0, 2, 1, 0, 0, 1] and print, rounded:
#   precision_score: macro 0.22, micro 0.33, weighted 0.22
#   recall_score:    macro 0.33, micro 0.33, weighted 0.33
#   f1_score:        macro 0.267, micro 0.33, weighted 0.267
PUBLISHED_PRF = {
    "precision": {"macro": 0.22, "micro": 0.33, "weighted": 0.22},
    "recall": {"macro": 0.33, "micro": 0.33, "weighted": 0.33},
    "f1": {"macro": 0.267, "micro": 0.33, "weighted": 0.267},
}


@pytest.mark.parametrize("name", list(PUBLISHED_PRF))
@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_prf_published(name, average):
    y_true, y_pred = [0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1]
    published = PUBLISHED_PRF[name][average]
    places = len(str(published).split(".")[1])  # the docstrings round (0.22 is 2/9)
    got = metrics.score(name, y_true, y_pred, average)
    assert isinstance(got, float)
    assert got == pytest.approx(published, abs=0.5 * 10**-places)
    assert metrics.classification_scores(y_true, y_pred, [name], average) == {name: got}


def test_zero_division_is_zero_and_silent():
    # f1_score docstring (scikit-learn 1.9), binary case with no positive at all:
    #   f1_score([0]*6, [0]*6) -> 0.0 (and 1.0 only with zero_division=1.0)
    empty = [0, 0, 0, 0, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division=0 is asked for, so no UndefinedMetricWarning
        got = metrics.classification_scores(empty, empty, ["precision", "recall", "f1"], "binary")
    assert got == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # precision_score docstring: y_pred all 0 -> per class [0.33, 0., 0.] (classes 1, 2 never
    # predicted count as 0): the macro mean is 1/9 of that.
    y_true = [0, 1, 2, 0, 1, 2]
    assert metrics.score("precision", y_true, empty, "macro") == pytest.approx(0.33 / 3, abs=2e-3)


def test_classification_scores_all_four_and_match_sklearn():
    # `average` reaches precision/recall/F1 only (accuracy takes none).
    got = metrics.classification_scores(Y_TRUE, Y_PRED, average="macro")
    assert list(got) == list(NAMES) and got["accuracy"] == 0.7
    assert all(isinstance(v, float) for v in got.values())
    for average in ("macro", "micro", "weighted"):
        got = metrics.classification_scores(np.array(Y_TRUE), np.array(Y_PRED), NAMES, average)
        assert got["precision"] == pytest.approx(
            skm.precision_score(Y_TRUE, Y_PRED, average=average))
        assert got["recall"] == pytest.approx(skm.recall_score(Y_TRUE, Y_PRED, average=average))
        assert got["f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average=average))
        # One way: the bootstrap's `score` gives the headline's own number.
        assert all(metrics.score(n, Y_TRUE, Y_PRED, average) == got[n] for n in NAMES)
    with pytest.raises(TypeError, match="averge"):
        metrics.classification_scores(Y_TRUE, Y_PRED, averge="macro")


def test_unknown_metric_names_the_allowed_ones():
    with pytest.raises(TuneshipError, match="'bertscore'.*allowed: accuracy, precision, recall, f1"):
        metrics.classification_scores(Y_TRUE, Y_PRED, ["accuracy", "bertscore"])
    with pytest.raises(TuneshipError, match="'rouge'.*allowed: accuracy"):
        metrics.score("rouge", Y_TRUE, Y_PRED)


# --- BLEU: sacreBLEU ----------------------------------------------------------------------------

def test_bleu_published():
    # sacreBLEU's test/test_sentence_bleu.py (mjpost/sacrebleu, example from issue #98), default
    # smoothing ('exp'), tokenizer '13a', case-sensitive: 8.493 (EPSILON 1e-3). One sentence with
    # all four n-gram orders present, so corpus BLEU equals that sentence BLEU.
    ref = "producţia de zahăr brut se exprimă în zahăr alb;"
    hyp = "Producția de zahăr primă va fi exprimată în ceea ce privește zahărul alb;"
    got = metrics.bleu([hyp], [ref])
    assert isinstance(got, float) and got == pytest.approx(8.493, abs=1e-3)  # 0-100, not 0-1
    # Same file (issue #141): no n-gram in common -> 0.0 with every smoothing method.
    assert metrics.bleu(["this is a cat"], ["okay thanks"]) == 0.0
    # test/test_bleu.py: "this is a test" against itself -> 1.0 on the 0-1 scale, i.e. 100.
    same = ["this is a test", "the quick brown fox jumps over the lazy dog"]
    assert metrics.bleu(same, same) == pytest.approx(100.0)


def test_bleu_needs_one_reference_per_prediction():
    with pytest.raises(TuneshipError, match="2 predictions but 1 references"):
        metrics.bleu(["a b", "c d"], ["a b"])
    with pytest.raises(TuneshipError, match="no predictions"):
        metrics.bleu([], [])


# --- ROUGE-L: rouge-score -----------------------------------------------------------------------

def test_rouge_l_published():
    # google-research/google-research rouge/rouge_scorer_test.py (the rouge-score package):
    #   testRougeLConsecutive:    score("testing one two", "testing one") -> F 4/5
    #   testRougeLNonConsecutive: score("testing one two", "testing two") -> F 4/5
    #   testRougeEmpty:           score("testing one two", "")            -> F 0
    # (score(target, prediction); stemming maps "testing" to "test" on both sides.)
    target = "testing one two"
    assert metrics.rouge_l(["testing one"], [target]) == pytest.approx(4 / 5)
    assert metrics.rouge_l(["testing two"], [target]) == pytest.approx(4 / 5)
    got = metrics.rouge_l(["testing one", "testing two", ""], [target] * 3)
    assert isinstance(got, float) and got == pytest.approx((4 / 5 + 4 / 5 + 0) / 3)  # pair mean


def test_rouge_l_word_order_and_stemming():
    # Lin (2004), ROUGE paper, Section 3.1: reference "police killed the gunman"; S3 "the gunman
    # kill police" has the same unigrams as S2 but ROUGE-L 2/4. Lin gives S2 "police kill the
    # gunman" 3/4 without stemming; with use_stemmer=True "killed" and "kill" match, so 1.0.
    ref = "police killed the gunman"
    assert metrics.rouge_l(["the gunman kill police"], [ref]) == pytest.approx(0.5)
    assert metrics.rouge_l(["police kill the gunman"], [ref]) == pytest.approx(1.0)
    # Lowercased, punctuation dropped: LCS "the cat on the mat" is 5 of 6 words on both sides.
    got = metrics.rouge_l(["The cat sat on the mat."], ["the cat is on the mat"])
    assert got == pytest.approx(5 / 6)
    with pytest.raises(TuneshipError, match="one reference per prediction"):
        metrics.rouge_l(["a"], ["a", "b"])


# --- perplexity ---------------------------------------------------------------------------------

def test_perplexity_uniform_is_vocab_size_and_token_weighted():
    # A uniform model over V tokens costs log V nats per token: perplexity V, whatever the lengths.
    vocab, lengths = 50, [3, 10, 1]
    sums = [n * math.log(vocab) for n in lengths]
    assert metrics.perplexity(sums, lengths) == pytest.approx(vocab)
    assert metrics.perplexity(np.array(sums), np.array(lengths)) == pytest.approx(vocab)

    # Token-weighted over rows, not the mean of per-row perplexities: mean NLLs 1.0 over 3
    # tokens and 3.0 over 1 token -> exp((3 + 3) / 4) = exp(1.5), not (e + e^3) / 2.
    got = metrics.perplexity([1.0 * 3, 3.0 * 1], [3, 1])
    assert got == pytest.approx(math.exp(1.5))
    assert isinstance(got, float)


def test_perplexity_errors():
    with pytest.raises(TuneshipError, match="zero tokens"):
        metrics.perplexity([0.0], [0])
    with pytest.raises(TuneshipError, match="zero tokens"):
        metrics.perplexity([], [])
    with pytest.raises(TuneshipError, match="non-negative"):
        metrics.perplexity([1.0, 1.0], [2, -1])
    with pytest.raises(TuneshipError, match="2 NLL sums but 1 token counts"):
        metrics.perplexity([1.0, 2.0], [3])
