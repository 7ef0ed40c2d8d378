"""Optimized runtimes of a registered causal LM (base + LoRA adapter), scored against its fp32
model: bf16 weights, and int8 weight-only linear layers of the base (`bentos/int8_weights.py`,
the module the LLM service serves `llm_dtype: int8` with; the LoRA matrices stay fp32 and
unmerged, as served).

Parity on the test blocks (the task's own scoring): `perplexity`, `reference_perplexity` (fp32)
and `perplexity_ratio` (candidate / fp32).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import datasets
import torch
from mlflow.entities.model_registry import ModelVersion

from tuneship.config import OptimizeConfig
from tuneship.errors import TuneshipError
from tuneship.settings import bento_module
from tuneship.tasks.base import Candidate, RuntimeSuite
from tuneship.tasks.causal_lm import registry, scoring

if TYPE_CHECKING:
    from tuneship.context import StageContext


def int8_linear(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose linear layers, except LoRA's own, hold int8 weights."""
    quantized = copy.deepcopy(model)
    bento_module("int8_weights").quantize_int8(quantized)
    return quantized


class LMRuntimes(RuntimeSuite):
    """A version's causal LM (fp32 reference) and the test blocks it is scored on."""

    runtimes: ClassVar[dict[str, tuple[str, str]]] = {
        "torch-bf16": ("torch", "bfloat16"), "torch-int8": ("torch", "int8")}

    def __init__(self, model: torch.nn.Module, tokenizer, blocks: datasets.Dataset,
                 batch_size: int):
        self.model, self.tokenizer = model.float().eval(), tokenizer
        self.blocks, self.batch_size = blocks, batch_size
        self.reference_perplexity = self.perplexity(self.model)

    def perplexity(self, model: torch.nn.Module) -> float:
        nll, counts = scoring.block_nll(model, self.tokenizer, self.blocks, self.batch_size)
        return scoring.perplexity(nll, counts)

    def build(self, name: str, out: Path) -> Candidate:
        if name == "torch-bf16":
            return Candidate(name, copy.deepcopy(self.model).to(torch.bfloat16))
        if name == "torch-int8":
            return Candidate(name, int8_linear(self.model))
        raise TuneshipError(f"unknown causal LM runtime {name!r}; choose from {list(self.runtimes)}")

    def parity(self, candidate: Candidate) -> dict[str, float]:
        found, ref = self.perplexity(candidate.runner), self.reference_perplexity
        return {"perplexity_ratio": round(found / ref, 6), "perplexity": round(found, 6),
                "reference_perplexity": round(ref, 6)}


def suite(ctx: StageContext, version: ModelVersion, cfg: OptimizeConfig) -> LMRuntimes:
    """The version's fp32 model (its base with the adapter) over this pipeline's test blocks."""
    prepared = ctx.work.load_prepared()
    blocks = prepared.splits["test"]
    if cfg.max_rows:
        blocks = blocks.select(range(min(cfg.max_rows, len(blocks))))
    model, tokenizer = registry.load_scorable(ctx.client(), version, prepared.stats["tokenizer"])
    return LMRuntimes(model, tokenizer, blocks, cfg.batch_size)
