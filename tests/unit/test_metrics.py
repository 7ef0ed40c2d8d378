"""In-repo evaluate metrics: values against sklearn / hand computation, streaming, combine."""

import math

import evaluate
import numpy as np
import pytest
from sklearn import metrics as skm

from tuneship.metrics import METRICS_DIR, available_metrics, load_combined, load_metric

pytestmark = pytest.mark.unit

EXPECTED = ["accuracy", "bleu", "f1", "perplexity", "precision", "recall", "rouge"]
Y_TRUE = [0, 1, 2, 2, 1, 0, 1, 2, 0, 1]
Y_PRED = [0, 2, 2, 2, 1, 0, 0, 1, 0, 1]
WEIGHTS = [1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0, 1.0, 0.5, 2.0]


@pytest.fixture(autouse=True)
def offline_hf(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")


def test_available_metrics_load_offline():
    assert available_metrics() == EXPECTED
    assert all((METRICS_DIR / n / f"{n}.py").is_file() for n in EXPECTED)
    assert all(isinstance(load_metric(n), evaluate.EvaluationModule) for n in EXPECTED)


def test_unknown_metric_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown metric 'bertscore'.*accuracy.*rouge"):
        load_metric("bertscore")


def test_accuracy_matches_sklearn():
    acc = load_metric("accuracy")
    assert acc.compute(predictions=Y_PRED, references=Y_TRUE) == {"accuracy": 0.7}
    got = acc.compute(predictions=Y_PRED, references=Y_TRUE, sample_weight=WEIGHTS)["accuracy"]
    assert got == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED, sample_weight=WEIGHTS))
    count = acc.compute(predictions=Y_PRED, references=Y_TRUE, normalize=False)["accuracy"]
    assert count == 7.0 and isinstance(count, float)


@pytest.mark.parametrize(
    ("name", "sk_fn"),
    [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)],
)
@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_prf_match_sklearn(name, sk_fn, average):
    metric = load_metric(name)
    got = metric.compute(
        predictions=Y_PRED, references=Y_TRUE, average=average, sample_weight=WEIGHTS
    )[name]
    assert isinstance(got, float)
    assert got == pytest.approx(sk_fn(Y_TRUE, Y_PRED, average=average, sample_weight=WEIGHTS))
    binary_true, binary_pred = [0, 1, 1, 0, 1, 1], [0, 1, 0, 1, 1, 1]
    for pos_label in (0, 1):
        got = metric.compute(predictions=binary_pred, references=binary_true, pos_label=pos_label)
        assert got[name] == pytest.approx(sk_fn(binary_true, binary_pred, pos_label=pos_label))
    got = metric.compute(predictions=Y_PRED, references=Y_TRUE, average=None, labels=[2, 0])
    assert got[name] == pytest.approx(list(sk_fn(Y_TRUE, Y_PRED, average=None, labels=[2, 0])))


def test_zero_division_and_multilabel():
    precision = load_metric("precision")
    assert precision.compute(predictions=[0, 0], references=[1, 0], zero_division=1) == {
        "precision": 1.0
    }
    f1 = load_metric("f1", config_name="multilabel")
    y_true, y_pred = [[1, 0, 1], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]]
    got = f1.compute(predictions=y_pred, references=y_true, average="samples")["f1"]
    assert got == pytest.approx(skm.f1_score(np.array(y_true), np.array(y_pred), average="samples"))


def test_add_batch_streaming_equals_one_shot():
    one_shot = load_metric("f1").compute(predictions=Y_PRED, references=Y_TRUE, average="macro")
    streamed = load_metric("f1")
    for i in range(0, len(Y_TRUE), 3):
        streamed.add_batch(predictions=Y_PRED[i : i + 3], references=Y_TRUE[i : i + 3])
    assert streamed.compute(average="macro") == one_shot

    preds = ["the cat sat on the mat", "a dog barked", "hello world"]
    refs = [["the cat is on the mat"], ["the dog barked loudly"], ["hello there world"]]
    for name in ("bleu", "rouge"):
        metric = load_metric(name)
        for p, r in zip(preds, refs, strict=True):
            metric.add(prediction=p, reference=r)
        assert metric.compute() == load_metric(name).compute(predictions=preds, references=refs)


def test_perplexity_uniform_is_vocab_size_and_token_weighted():
    ppl = load_metric("perplexity")
    vocab, lengths = 50, [3, 10, 1]
    sums = [n * math.log(vocab) for n in lengths]
    assert ppl.compute(predictions=sums, references=lengths)["perplexity"] == pytest.approx(vocab)

    # Token-weighted over batches, not the mean of per-batch perplexities.
    means, counts = [1.0, 3.0], [3, 1]
    ppl.add_batch(predictions=means[:1], references=counts[:1])
    ppl.add_batch(predictions=means[1:], references=counts[1:])
    got = ppl.compute(reduction="mean")
    assert got == {"perplexity": pytest.approx(math.exp(1.5)), "nll": 1.5, "num_tokens": 4}
    sums = [m * n for m, n in zip(means, counts, strict=True)]
    assert ppl.compute(predictions=sums, references=counts)["perplexity"] == got["perplexity"]
    with pytest.raises(ValueError, match="zero tokens"):
        ppl.compute(predictions=[0.0], references=[0])


def test_rouge_hand_computed():
    rouge = load_metric("rouge")
    got = rouge.compute(
        predictions=["The cat sat on the mat."], references=["the cat is on the mat"]
    )
    # unigrams: 5 of 6 match; bigrams: the-cat, on-the, the-mat = 3 of 5; LCS "the cat on the mat"
    assert got == pytest.approx({"rouge1": 5 / 6, "rouge2": 0.6, "rougeL": 5 / 6})

    # Lin (2004): same unigrams, but word order changes ROUGE-L.
    ref = "police killed the gunman"
    preds = ["police kill the gunman", "the gunman kill police"]
    got = rouge.compute(
        predictions=preds, references=[ref, ref], rouge_types=["rougeL"], use_aggregator=False
    )
    assert got == {"rougeL": pytest.approx([0.75, 0.5])}

    multi = rouge.compute(predictions=["a b c"], references=[["x y z", "a b c"]])
    assert multi == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    with pytest.raises(ValueError, match="unsupported rouge types"):
        rouge.compute(predictions=["a"], references=["a"], rouge_types=["rougeLsum"])


def test_bleu_hand_computed():
    bleu = load_metric("bleu")
    same = ["the quick brown fox jumps over the lazy dog", "hello there general kenobi"]
    got = bleu.compute(predictions=same, references=same)
    assert got["bleu"] == 1.0 and got["brevity_penalty"] == 1.0 and got["precisions"] == [1.0] * 4

    # Papineni's modified precision: "the" x7 against a reference holding it twice -> 2/7.
    got = bleu.compute(
        predictions=["the the the the the the the"],
        references=[["the cat is on the mat", "there is a cat on the mat"]],
        max_order=1,
    )
    assert got["bleu"] == pytest.approx(2 / 7) and got["brevity_penalty"] == 1.0

    # Brevity penalty: c = 2, r = 6 -> exp(1 - 6/2); the closest reference length is used.
    got = bleu.compute(predictions=["the cat"], references=["the cat is on the mat"], max_order=2)
    assert got["bleu"] == pytest.approx(math.exp(-2)) and got["reference_length"] == 6
    closest = bleu.compute(predictions=["the cat"], references=[["the cat is on the mat", "a cat"]])
    assert closest["reference_length"] == 2

    # No 4-gram match: 0 unless smoothed.
    kwargs = {"predictions": ["the cat sat down"], "references": ["the cat sat up"]}
    assert bleu.compute(**kwargs)["bleu"] == 0.0
    smoothed = bleu.compute(**kwargs, smooth=True)
    assert smoothed["bleu"] == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)


def test_load_combined_routes_kwargs():
    names = ["accuracy", "precision", "recall", "f1"]
    # Upstream evaluate.combine passes `average` to accuracy too, which rejects it.
    with pytest.raises(TypeError, match="average"):
        evaluate.combine([load_metric(n) for n in names]).compute(
            predictions=Y_PRED, references=Y_TRUE, average="macro"
        )
    combined = load_combined(names)
    got = combined.compute(predictions=Y_PRED, references=Y_TRUE, average="macro")
    assert set(got) == set(names) and got["accuracy"] == 0.7
    assert got["f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average="macro"))

    for i in range(0, len(Y_TRUE), 4):
        combined.add_batch(predictions=Y_PRED[i : i + 4], references=Y_TRUE[i : i + 4])
    assert combined.compute(average="macro") == got
    with pytest.raises(TypeError, match="averge"):
        combined.compute(predictions=Y_PRED, references=Y_TRUE, averge="macro")
