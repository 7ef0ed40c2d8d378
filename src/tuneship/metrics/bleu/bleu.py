"""Corpus BLEU in pure Python (after evaluate's bundled nmt_bleu)."""

import math
import re
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = """
BLEU (Papineni et al., 2002) scores a corpus of candidate translations against references:
the geometric mean of modified (clipped) n-gram precisions for n = 1..max_order, times a
brevity penalty BP = exp(1 - r/c) when the candidate length c is below the reference length r.
r sums, per sentence, the reference length closest to the candidate's (ties: the shorter).
Counts are pooled over the corpus before dividing (corpus BLEU, not a mean of sentence BLEUs).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): Candidate translations.
    references (`list` of `str` or `list` of `list` of `str`): One or more references each.
    tokenizer (`callable`): `str -> list[str]`. Default: words and single punctuation marks.
    max_order (`int`): Maximum n-gram order. Defaults to 4.
    smooth (`bool`): Add-one smoothing of the precisions (Lin and Och, 2004). Defaults to False.
Returns:
    bleu (`float`): BLEU score in [0, 1].
    precisions (`list` of `float`): Modified n-gram precisions.
    brevity_penalty (`float`), length_ratio (`float`), translation_length (`int`),
    reference_length (`int`).
Examples:
    >>> bleu = evaluate.load("src/tuneship/metrics/bleu")
    >>> bleu.compute(predictions=["hello there general kenobi"],
    ...              references=[["hello there general kenobi", "hello there !"]])["bleu"]
    1.0
"""

_CITATION = """
@inproceedings{papineni-etal-2002-bleu,
  title = "{B}leu: a Method for Automatic Evaluation of Machine Translation",
  author = "Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing",
  booktitle = "Proceedings of the 40th Annual Meeting of the ACL",
  year = "2002",
  url = "https://aclanthology.org/P02-1040",
  pages = "311--318",
}
"""


def tokenize(text):
    return re.findall(r"\w+|[^\w\s]", text)


def _ngrams(tokens, max_order):
    return Counter(
        tuple(tokens[i : i + n])
        for n in range(1, max_order + 1)
        for i in range(len(tokens) - n + 1)
    )


def compute_bleu(reference_corpus, translation_corpus, max_order=4, smooth=False):
    """Corpus BLEU of token lists; reference_corpus holds a list of references per sentence."""
    matches = [0] * max_order
    possible = [0] * max_order
    ref_len = trans_len = 0
    for refs, trans in zip(reference_corpus, translation_corpus, strict=True):
        trans_len += len(trans)
        ref_len += min((abs(len(r) - len(trans)), len(r)) for r in refs)[1]
        max_ref_counts = Counter()
        for ref in refs:
            max_ref_counts |= _ngrams(ref, max_order)
        for ngram, count in (_ngrams(trans, max_order) & max_ref_counts).items():
            matches[len(ngram) - 1] += count
        for n in range(1, max_order + 1):
            possible[n - 1] += max(len(trans) - n + 1, 0)
    if smooth:
        precisions = [(m + 1.0) / (p + 1.0) for m, p in zip(matches, possible, strict=True)]
    else:
        precisions = [m / p if p else 0.0 for m, p in zip(matches, possible, strict=True)]
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) else 0
    ratio = trans_len / ref_len if ref_len else 0.0
    bp = 1.0 if ratio > 1.0 else (math.exp(1 - 1.0 / ratio) if ratio else 0.0)
    return geo_mean * bp, precisions, bp, ratio, trans_len, ref_len


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
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
            reference_urls=["https://aclanthology.org/P02-1040"],
        )

    def _compute(self, predictions, references, tokenizer=None, max_order=4, smooth=False):
        tokenizer = tokenizer or tokenize
        references = [[r] if isinstance(r, str) else r for r in references]
        bleu, precisions, bp, ratio, trans_len, ref_len = compute_bleu(
            [[tokenizer(r) for r in refs] for refs in references],
            [tokenizer(p) for p in predictions],
            max_order=max_order,
            smooth=smooth,
        )
        return {
            "bleu": float(bleu),
            "precisions": [float(p) for p in precisions],
            "brevity_penalty": float(bp),
            "length_ratio": float(ratio),
            "translation_length": trans_len,
            "reference_length": ref_len,
        }
