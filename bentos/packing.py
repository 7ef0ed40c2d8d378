"""How a batch of tokenized texts is cut into forward passes (pure Python, no model needed).

A pass over `count` texts padded to the longest one, `longest` tokens, costs about
`pass_cost + count * longest` token-times: a fixed part (reading every weight once, launching
kernels) and a part that grows with the padded tokens. MiniLM on the 2-core dev VM: 14 ms +
0.34 ms per padded token, so one pass costs as much as ~40 tokens (bentos/README.md).
"""

from __future__ import annotations

# (most padded tokens per pass, cost of a pass in tokens) by device kind. CPU: measured as above
# and with `benchmarks/serve_load.py`; CUDA: a pass is mostly launch cost, so few big ones.
DEFAULTS = {"cpu": (1024, 40.0), "cuda": (16384, 4096.0)}


def plan_passes(lengths: list[int], budget: int, pass_cost: float) -> list[list[int]]:
    """Indices of `lengths` grouped into passes of the least total cost.

    Texts are sorted by length and cut into runs (an optimal grouping pads each text to the
    longest of its run, so only sorted runs need trying); each pass has at most `budget` padded
    tokens unless one text alone is longer. Dynamic programming over the cut points, O(n x run).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]
    best = [0.0] + [float("inf")] * len(ordered)
    cut = [0] * (len(ordered) + 1)
    for end in range(1, len(ordered) + 1):
        longest = ordered[end - 1]
        start = end - 1
        while True:  # the pass holds ordered[start:end]; always try a single text
            cost = best[start] + pass_cost + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
            if start == 0 or (end - start + 1) * longest > budget:
                break
            start -= 1
    passes: list[list[int]] = []
    end = len(ordered)
    while end:
        passes.append(order[cut[end] : end])
        end = cut[end]
    return passes[::-1]
