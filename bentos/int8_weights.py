"""int8 weight-only linear layers for serving a causal LM (`llm_dtype: int8`).

Each large linear layer's weight is stored as int8 with one symmetric scale per output channel
(`scale = max |w_row| / 127`); activations stay in floating point. The product runs in torch's
fused weight-only kernel (`torch._weight_int8pack_mm`), which dequantizes inside the GEMM, so the
weights are read from memory at a quarter of float32's size: what bounds a decode step of a few
rows. The kernel's vectorised CPU path takes bfloat16 activations, so a float32 input is cast
to bfloat16 for the product and its output cast back (the norms, attention and residuals stay
float32).

`Int8Linear` subclasses `torch.nn.Linear` (same `in_features`/`out_features`, an int8 `weight`),
so peft wraps it as a LoRA base layer like any linear layer; the LoRA factors stay floating
point and run unmerged (an adapter cannot be merged into int8 weights without re-quantizing).
The optimize stage scores this same module (tuneship.tasks.causal_lm.runtimes), so the
perplexity its parity gate passed is the arithmetic the service runs.
"""

from __future__ import annotations

from typing import Any

import torch

MIN_SIDE = 16  # smaller matrices stay as they are
K_BLOCK = 16  # the kernel reads input features in blocks of 16: other widths gave wrong
              # products (8) or crashed it (24, 40) on torch 2.13's CPU path, so they stay float
COMPUTE_DTYPE = torch.bfloat16


class Int8Linear(torch.nn.Linear):
    """`linear` with its weight quantized to int8 per output channel (bias kept as it is)."""

    def __init__(self, linear: torch.nn.Linear, compute_dtype: torch.dtype = COMPUTE_DTYPE) -> None:
        torch.nn.Module.__init__(self)  # not Linear's: it would allocate a float weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.weight = torch.nn.Parameter(quantized.contiguous(), requires_grad=False)
        self.register_buffer("scales", scales.to(compute_dtype))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.int8:
            raise RuntimeError("Int8Linear's weight is no longer int8 (re-tied or cast?)")
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype)
        out = torch._weight_int8pack_mm(flat, self.weight, self.scales).to(x.dtype)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def dequantized(self) -> torch.Tensor:
        """The float32 weight these int8 values and scales stand for."""
        return self.weight.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 weights, {self.scales.dtype} compute")


def quantize_int8(model: Any, compute_dtype: torch.dtype = COMPUTE_DTYPE) -> int:
    """Replace `model`'s linear layers by `Int8Linear` in place; returns how many.

    LoRA's own layers (`lora_*`), matrices with a side under MIN_SIDE and layers whose input
    width is not a multiple of K_BLOCK are left in floating point; a tied output head becomes
    its own int8 copy (the input embedding stays as it is).
    """
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and "lora_" not in name
               and min(module.weight.shape) >= MIN_SIDE and module.in_features % K_BLOCK == 0]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(module, compute_dtype))
    return len(targets)


def is_int8(model: Any) -> bool:
    """Whether any of `model`'s layers hold int8 weights."""
    return any(isinstance(m, Int8Linear) for m in model.modules())
