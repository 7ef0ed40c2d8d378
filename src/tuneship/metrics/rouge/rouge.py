"""ROUGE-N / ROUGE-L F-measure in pure Python (no nltk, no network)."""

import re
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = """
ROUGE (Recall-Oriented Understudy for Gisting Evaluation) compares a generated text with one
or more references. ROUGE-N counts overlapping word n-grams; ROUGE-L uses the longest common
subsequence (LCS) of words. This implementation reports F-measures, tokenizes like
`rouge_score` without stemming (lowercase, keep runs of [a-z0-9]) and, with several
references, keeps the best score per prediction, as the official metric does.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): Texts to score.
    references (`list` of `str` or `list` of `list` of `str`): One or more references each.
    rouge_types (`list` of `str`): Any of `"rouge1"`, `"rouge2"`, ..., `"rouge9"`, `"rougeL"`.
        Defaults to `["rouge1", "rouge2", "rougeL"]`.
    use_aggregator (`bool`): If True (default), return the mean over predictions;
        otherwise one score per prediction.
    tokenizer (`callable`): Optional `str -> list[str]` replacing the default tokenizer.
Returns:
    One key per rouge type: a `float` F-measure (or a `list` of them if use_aggregator=False).
Examples:
    >>> rouge = evaluate.load("src/tuneship/metrics/rouge")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat down"])["rougeL"]
    0.8571428571428571
"""

_CITATION = """
@inproceedings{lin-2004-rouge,
  title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
  author = "Lin, Chin-Yew",
  booktitle = "Text Summarization Branches Out",
  year = "2004",
  publisher = "Association for Computational Linguistics",
  url = "https://aclanthology.org/W04-1013",
  pages = "74--81",
}
"""

_ROUGE_TYPE = re.compile(r"^rouge([1-9]|L)$")


def tokenize(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def _f_measure(matches, n_pred, n_ref):
    if matches == 0:
        return 0.0
    precision, recall = matches / n_pred, matches / n_ref
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _lcs_length(a, b):
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _score(rouge_type, pred, ref):
    if rouge_type == "rougeL":
        return _f_measure(_lcs_length(pred, ref), len(pred), len(ref))
    n = int(rouge_type[5:])
    pred_ngrams, ref_ngrams = _ngrams(pred, n), _ngrams(ref, n)
    overlap = sum((pred_ngrams & ref_ngrams).values())
    return _f_measure(overlap, sum(pred_ngrams.values()), sum(ref_ngrams.values()))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        text = datasets.Value("string", id="sequence")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": text, "references": datasets.Sequence(text, id="references")}
                ),
                datasets.Features({"predictions": text, "references": text}),
            ],
            reference_urls=["https://aclanthology.org/W04-1013"],
        )

    def _compute(
        self, predictions, references, rouge_types=None, use_aggregator=True, tokenizer=None
    ):
        rouge_types = rouge_types or ["rouge1", "rouge2", "rougeL"]
        bad = [t for t in rouge_types if not _ROUGE_TYPE.match(t)]
        if bad:
            raise ValueError(f"unsupported rouge types {bad}; use rouge1..rouge9 or rougeL")
        tokenizer = tokenizer or tokenize
        scores = {t: [] for t in rouge_types}
        for pred, refs in zip(predictions, references, strict=True):
            refs = [refs] if isinstance(refs, str) else refs
            pred_tokens = tokenizer(pred)
            ref_tokens = [tokenizer(r) for r in refs]
            for t in rouge_types:
                scores[t].append(max(_score(t, pred_tokens, r) for r in ref_tokens))
        if not use_aggregator:
            return scores
        return {t: (sum(s) / len(s) if s else 0.0) for t, s in scores.items()}
