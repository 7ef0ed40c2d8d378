"""Evaluation metrics, computed by the reference implementations themselves.

Classification: scikit-learn. Generation: sacreBLEU (BLEU) and Google's `rouge-score` (ROUGE-L),
the packages published figures are computed with, called directly (no `evaluate.load`, which
needs the Hugging Face Hub). Perplexity: exp of the token-weighted mean NLL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from tuneship.errors import TuneshipError

_CLASSIFICATION: dict[str, Callable[..., float]] = {
    "accuracy": lambda refs, preds, average: accuracy_score(refs, preds),
    "precision": lambda refs, preds, average: precision_score(refs, preds, average=average,
                                                              zero_division=0),
    "recall": lambda refs, preds, average: recall_score(refs, preds, average=average,
                                                        zero_division=0),
    "f1": lambda refs, preds, average: f1_score(refs, preds, average=average, zero_division=0),
}
CLASSIFICATION_METRICS = tuple(_CLASSIFICATION)


def _check_names(names: Iterable[str]) -> None:
    unknown = [n for n in names if n not in _CLASSIFICATION]
    if unknown:
        raise TuneshipError(f"unknown classification metric(s) {', '.join(map(repr, unknown))}; "
                            f"allowed: {', '.join(CLASSIFICATION_METRICS)}")


def score(name: str, refs, preds, average: str = "macro") -> float:
    """One classification metric (scikit-learn; precision/recall/F1 `average`d, zero_division=0).

    The headline and its bootstrap interval both come from here, so they are computed one way.
    """
    _check_names([name])
    return float(_CLASSIFICATION[name](refs, preds, average))


def classification_scores(refs, preds, names: Iterable[str] = CLASSIFICATION_METRICS,
                          average: str = "macro") -> dict[str, float]:
    """`{name: score}` for each of `names` (accuracy, precision, recall, f1) via scikit-learn."""
    names = list(names)
    _check_names(names)
    return {name: score(name, refs, preds, average) for name in names}


def _paired(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise TuneshipError(f"{len(predictions)} predictions but {len(references)} references: "
                            "give one reference per prediction")
    if not predictions:
        raise TuneshipError("no predictions to score")


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU of `predictions`, one reference each: `sacrebleu.corpus_bleu` with its defaults
    (13a tokenization, exponential smoothing, case-sensitive).

    On sacreBLEU's 0-100 scale (not 0-1), so it compares with published sacreBLEU scores.
    """
    import sacrebleu

    _paired(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0-1) over (prediction, reference) pairs: `rouge_score`'s
    `RougeScorer(["rougeL"], use_stemmer=True)` (sentence-level LCS, Porter stemming)."""
    from rouge_score import rouge_scorer  # imported when used: it imports nltk

    _paired(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(np.mean([scorer.score(target=ref, prediction=pred)["rougeL"].fmeasure
                          for pred, ref in zip(predictions, references, strict=True)]))


def perplexity(nll_sums, counts) -> float:
    """exp(sum of `nll_sums` / sum of `counts`): rows' summed next-token NLLs (nats) and their
    predicted-token counts, so it is token-weighted, not a mean of per-row perplexities."""
    sums, tokens = np.asarray(nll_sums, dtype=float), np.asarray(counts)
    if sums.shape != tokens.shape:
        raise TuneshipError(f"{sums.size} NLL sums but {tokens.size} token counts")
    if (tokens < 0).any():
        raise TuneshipError("token counts must be non-negative")
    total = float(tokens.sum())
    if total == 0:
        raise TuneshipError("perplexity is undefined for zero tokens: no row has a predicted token")
    return math.exp(math.fsum(sums.ravel()) / total)


__all__ = ["CLASSIFICATION_METRICS", "bleu", "classification_scores", "perplexity", "rouge_l",
           "score"]
