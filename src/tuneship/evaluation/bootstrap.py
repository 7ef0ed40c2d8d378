"""One percentile bootstrap for every headline metric: rows drawn with replacement."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def interval(statistic: Callable[[np.ndarray], float], rows: int, samples: int,
             confidence: float, seed: int) -> tuple[float, float]:
    """The `confidence` interval of `statistic(row_indices)` over `samples` resamples.

    NaN when there is nothing to resample (no samples asked, or fewer than two rows).
    """
    if samples == 0 or rows < 2:
        return (float("nan"), float("nan"))
    draws = np.random.default_rng(seed).integers(0, rows, size=(samples, rows))
    values = [statistic(idx) for idx in draws]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
