"""The causal-LM promote stage: the spine's gate, with a perplexity re-scorer for champions.

The gate itself is `tuneship.registry.promote` unchanged: `registry.gate.metric: perplexity`
with `higher_is_better: false` compares the challenger with the champion, and
`registry.gate.floors: {perplexity_reduction: ...}` demands the configured drop below the base
model measured in the same evaluation. When the champion was tested on other data, it is scored
here on the challenger's test blocks — only if both use the same vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from omegaconf import DictConfig

from tuneship.config import EvalConfig, section
from tuneship.data.preprocess import load_prepared
from tuneship.errors import TuneshipError
from tuneship.registry import promote


def run(cfg: DictConfig) -> dict:
    """Judge @challenger against the gate (see `tuneship.registry.promote.run`)."""
    return promote.run(cfg, rescorer=rescore)


def rescore(cfg: DictConfig, version: ModelVersion, metric: str) -> float:
    """Perplexity of a registered (merged) version on `<work_dir>/data`'s test blocks."""
    from tuneship.lm.data import tokenizer_digest  # torch/transformers: only when re-scoring
    from tuneship.lm.evaluate import block_nll, perplexity

    if metric != "perplexity":
        raise TuneshipError(f"cannot re-score champion v{version.version} on '{metric}' for the "
                            "causal_lm task: use registry.gate.metric=perplexity")
    ev = section(cfg, "eval", EvalConfig)
    prepared = load_prepared(Path(cfg.paths.work_dir) / "data")
    parts = mlflow.transformers.load_model(f"models:/{version.name}/{version.version}",
                                           return_type="components")
    tokenizer = parts["tokenizer"]
    if tokenizer_digest(tokenizer) != prepared.stats["tokenizer"]:
        raise TuneshipError(f"champion v{version.version} uses another vocabulary: perplexities "
                            "per token cannot be compared")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    nll, counts = block_nll(parts["model"], tokenizer, prepared.splits["test"], ev.batch_size)
    return perplexity(nll, counts)
