"""The parity gate: a candidate runtime passes when its figures against the fp32 model stay
inside `optimize.gate`. Each rule applies when the task reported its figure."""

from __future__ import annotations

from tuneship.config import OptimizeGateConfig


def judge(gate: OptimizeGateConfig, parity: dict[str, float]) -> str | None:
    """None when `parity` passes, else the reason (every broken rule, `; `-joined)."""
    broken = []
    if "accuracy_delta" in parity and -parity["accuracy_delta"] > gate.max_accuracy_drop:
        broken.append(f"accuracy drop {-parity['accuracy_delta']:.4f} > {gate.max_accuracy_drop:g}")
    if "agreement" in parity and parity["agreement"] < gate.min_agreement:
        broken.append(f"agreement {parity['agreement']:.4f} < {gate.min_agreement:g}")
    if "perplexity_ratio" in parity and parity["perplexity_ratio"] > 1 + gate.max_perplexity_rise:
        broken.append(f"perplexity ratio {parity['perplexity_ratio']:.4f} > "
                      f"{1 + gate.max_perplexity_rise:g}")
    if not {"accuracy_delta", "agreement", "perplexity_ratio"} & set(parity):
        broken.append(f"no parity figure the gate knows (got {sorted(parity)})")
    return "; ".join(broken) or None
