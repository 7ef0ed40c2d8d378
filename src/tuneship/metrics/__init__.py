"""In-repo evaluation metrics, loadable offline with HF `evaluate`.

`evaluate.load("accuracy")` needs the Hugging Face Hub; these modules are local copies
(one folder per metric, `<name>/<name>.py`) that `evaluate.load(<folder>)` imports instead.
"""

import inspect
from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent


def available_metrics() -> list[str]:
    """Names of the metrics shipped in this package."""
    return sorted(p.parent.name for p in METRICS_DIR.glob("*/*.py") if p.stem == p.parent.name)


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load an in-repo metric by name; kwargs go to `evaluate.load` (e.g. config_name)."""
    if name not in available_metrics():
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(available_metrics())}")
    return evaluate.load(str(METRICS_DIR / name), **kwargs)


class CombinedMetrics(evaluate.CombinedEvaluations):
    """`evaluate.combine` result that hands each module only the compute kwargs it accepts.

    Upstream forwards every kwarg to every module, so `compute(average="macro")` on
    accuracy + f1 raises TypeError in accuracy's `_compute`.
    """

    def compute(self, predictions=None, references=None, **kwargs):
        accepted = [inspect.signature(m._compute).parameters for m in self.evaluation_modules]
        unused = set(kwargs).difference(*accepted)
        if unused:
            raise TypeError(f"no combined metric accepts {sorted(unused)}")
        results = [
            module.compute(
                predictions=predictions,
                references=references,
                **{k: v for k, v in kwargs.items() if k in params},
            )
            for module, params in zip(self.evaluation_modules, accepted, strict=True)
        ]
        return self._merge_results(results)


def load_combined(names: list[str], force_prefix: bool = False) -> CombinedMetrics:
    """Combine in-repo metrics like `evaluate.combine`; `compute` merges their results."""
    return CombinedMetrics([load_metric(name) for name in names], force_prefix=force_prefix)


__all__ = ["METRICS_DIR", "CombinedMetrics", "available_metrics", "load_combined", "load_metric"]
