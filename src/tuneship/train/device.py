"""Device and precision: GPU with bf16 (or fp16 on older cards) when present, fp32 on CPU."""

from __future__ import annotations

import torch

from tuneship.errors import TuneshipError


def pick_device(requested: str) -> str:
    """`auto` → cuda when available, else cpu."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise TuneshipError("train.device=cuda but no CUDA device is visible")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def pick_precision(requested: str, device: str) -> str:
    """`auto` → bf16 on Ampere+ GPUs, fp16 on older GPUs, fp32 on CPU."""
    if requested != "auto":
        if requested in ("bf16", "fp16") and device == "cpu":
            raise TuneshipError(f"train.precision={requested} needs a GPU; use auto or fp32")
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"
