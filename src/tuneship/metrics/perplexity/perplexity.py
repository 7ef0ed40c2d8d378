"""Corpus perplexity from negative log-likelihoods the trainer already computed."""

import math

import datasets
import evaluate

_DESCRIPTION = """
Token-weighted corpus perplexity: PPL = exp(sum of token NLLs / number of tokens).
Unlike the hub `perplexity` metric, no model is loaded: feed the (natural-log) negative
log-likelihoods an evaluation loop already has, one row per sequence or per batch, together
with the number of predicted tokens in that row. Averaging per-batch perplexities (or mean
losses) instead would overweight short batches.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): Summed NLL (nats) of each sequence or batch, or its mean
        per-token NLL (e.g. the `loss` of a causal LM) when `reduction="mean"`.
    references (`list` of `int`): Number of predicted tokens in each sequence or batch.
    reduction (`str`): `"sum"` (default) if predictions are NLL sums, `"mean"` if they are
        per-token means (they are then multiplied by the token counts).
Returns:
    perplexity (`float`): exp(total_nll / total_tokens).
    nll (`float`): total_nll / total_tokens, the mean per-token NLL.
    num_tokens (`int`): total_tokens.
Examples:
    >>> metric = evaluate.load("src/tuneship/metrics/perplexity")
    >>> metric.compute(predictions=[2.0, 4.0], references=[2, 4])["perplexity"]  # exp(1)
    2.718281828459045
"""

_CITATION = """
@article{jelinek1977perplexity,
  title={Perplexity--a measure of the difficulty of speech recognition tasks},
  author={Jelinek, Fred and Mercer, Robert L and Bahl, Lalit R and Baker, James K},
  journal={The Journal of the Acoustical Society of America},
  volume={62},
  number={S1},
  pages={S63--S63},
  year={1977}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://huggingface.co/docs/transformers/perplexity"],
        )

    def _compute(self, predictions, references, reduction="sum"):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if any(n < 0 for n in references):
            raise ValueError("token counts (references) must be non-negative")
        num_tokens = int(sum(references))
        if num_tokens == 0:
            raise ValueError("perplexity is undefined for zero tokens")
        if reduction == "mean":
            total_nll = math.fsum(p * n for p, n in zip(predictions, references, strict=True))
        else:
            total_nll = math.fsum(predictions)
        nll = total_nll / num_tokens
        return {"perplexity": math.exp(nll), "nll": nll, "num_tokens": num_tokens}
