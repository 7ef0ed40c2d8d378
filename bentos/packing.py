"""How a batch of tokenized texts is cut into forward passes (numpy only, no model needed).

A pass over `count` texts padded to the longest one, `longest` tokens, costs about
`pass_cost + count * longest` token-times: a fixed part (reading every weight once, launching
kernels) and a part that grows with the padded tokens. `pass_cost` is that fixed part in
tokens; the measurements behind the defaults are in bentos/README.md ("Forward passes").
"""

from __future__ import annotations

import numpy as np

# (most padded tokens per pass, cost of a pass in tokens) by device kind. CPU: from MiniLM's
# measured pass cost (bentos/README.md); CUDA: a pass is mostly launch cost, so few big ones.
DEFAULTS = {"cpu": (1024, 40.0), "cuda": (16384, 4096.0)}


def plan_passes(lengths: list[int], budget: int, pass_cost: float) -> list[list[int]]:
    """Indices of `lengths` grouped into passes of the least total cost.

    Texts are sorted by length and cut into runs (an optimal grouping pads each text to the
    longest of its run, so only sorted runs need trying); each pass has at most `budget` padded
    tokens unless one text alone is longer. Dynamic programming over the cut points: for each
    end, every start the budget allows, in one numpy step, so planning stays small next to a
    forward pass (timings in bentos/README.md).
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    ordered = np.asarray(lengths, dtype=np.int64)[order]
    best = np.zeros(len(order) + 1)
    cut = np.zeros(len(order) + 1, dtype=np.int64)
    for end in range(1, len(order) + 1):
        longest = int(ordered[end - 1])
        first = max(0, end - max(1, budget // max(longest, 1)))  # the longest run in budget
        costs = best[first:end] + pass_cost + (end - np.arange(first, end)) * longest
        pick = int(costs.argmin())
        best[end], cut[end] = costs[pick], first + pick
    passes: list[list[int]] = []
    end = len(order)
    while end:
        passes.append(order[cut[end] : end].tolist())
        end = int(cut[end])
    return passes[::-1]
