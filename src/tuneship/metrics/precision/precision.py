"""Precision metric (in-repo copy of the HF `evaluate` metric, loadable offline)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import precision_score

_DESCRIPTION = """
Precision is the fraction of correctly labeled positive examples out of all of the examples
that were labeled as positive: Precision = TP / (TP + FP).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    labels (`list` of `int`): Labels to include when `average != 'binary'`. Defaults to None.
    pos_label (`int`): The class to report if `average='binary'`. Defaults to 1.
    average (`str`): One of `'binary'` (default), `'micro'`, `'macro'`, `'weighted'`,
        `'samples'` (multilabel only) or None (one score per label).
    sample_weight (`list` of `float`): Sample weights. Defaults to None.
    zero_division (`"warn"`, `0`, `1` or `np.nan`): Value returned when the score is
        undefined (division by zero). Defaults to `"warn"` (acts as 0, with a warning).
Returns:
    precision (`float`, or `list` of `float` when `average=None`): between 0 and 1.
Examples:
    >>> metric = evaluate.load("src/tuneship/metrics/precision")
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 1])
    {'precision': 0.5}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Precision(evaluate.Metric):
    def _info(self):
        label = datasets.Value("int32")
        multilabel = self.config_name == "multilabel"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(label) if multilabel else label,
                    "references": datasets.Sequence(label) if multilabel else label,
                }
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_score.html"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        pos_label=1,
        average="binary",
        sample_weight=None,
        zero_division="warn",
    ):
        score = precision_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        score = np.asarray(score)
        return {"precision": float(score) if score.ndim == 0 else score.tolist()}
