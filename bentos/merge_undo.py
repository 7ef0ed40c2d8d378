"""Undoing a merged LoRA adapter bit for bit, in a fraction of a copy of the base weights.

peft unmerges an adapter by subtracting the delta it added, `(w + d) - d`, which leaves last-bit
rounding in some elements of `w`; over a server's life that adds up and flips greedy near-ties.
A copy of every weight the adapter touches undoes it exactly, but that is most of the model
(all linear layers of every block, for an adapter on all of them). The round trip is
deterministic, though: it can be computed before merging, exactly as peft will compute it, and
only the elements it changes need their original values kept (flat index + value).

`record(model, name)` builds that record for adapter `name` (weights of vanilla LoRA linear
layers sparsely where that is smaller; anything else a merge changes — LoRA biases, embedding
LoRA, DoRA and other variants — as whole copies); `restore()` puts the values back after peft's
`unmerge_adapter`. A record stays valid while the base weights and the adapter are unchanged, so
the engine keeps one per adapter and builds it once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class _Sparse:
    """The original values of `weight` where peft's merge round trip changes them."""

    weight: torch.Tensor
    index: torch.Tensor  # flat, row-major, into weight's logical shape
    values: torch.Tensor

    def restore(self) -> None:
        flat = self.index.long()
        columns = self.weight.shape[-1]
        self.weight.data[flat // columns, flat % columns] = self.values  # any strides

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.values.nbytes


@dataclass
class _Whole:
    """A whole copy of a parameter a merge changes."""

    param: torch.Tensor
    copy: torch.Tensor

    def restore(self) -> None:
        self.param.data.copy_(self.copy)

    @property
    def nbytes(self) -> int:
        return self.copy.nbytes


@dataclass
class MergeUndo:
    """What puts the base weights back after adapter `name` is unmerged (see the module)."""

    name: str
    parts: list[_Sparse | _Whole] = field(default_factory=list)
    elements: int = 0  # elements of the weights recorded sparsely
    changed: int = 0   # of those, how many the round trip changes

    def restore(self) -> None:
        for part in self.parts:
            part.restore()

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)


def record(model: Any, name: str) -> MergeUndo:
    """The undo record of merging adapter `name` into `model` (a peft model), before merging."""
    undo, seen = MergeUndo(name), set()
    for module in model.modules():
        lora_a = getattr(module, "lora_A", {})
        if name not in lora_a and name not in getattr(module, "lora_embedding_A", {}):
            continue
        base = module.get_base_layer()
        sparse_weight = (name in lora_a and name not in getattr(module, "lora_variant", {})
                         and isinstance(base, torch.nn.Linear) and base.weight.dim() == 2)
        for param_name, param in base.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if sparse_weight and param_name == "weight":
                undo.parts.append(_sparse(param, module.get_delta_weight(name), undo))
            else:
                undo.parts.append(_Whole(param, param.detach().clone()))
    return undo


def _sparse(weight: torch.Tensor, delta: torch.Tensor, undo: MergeUndo) -> _Sparse | _Whole:
    """peft's Linear merge is `weight += delta`, its unmerge `weight -= delta.to(weight.dtype)`:
    the same two operations on a copy show which elements do not come back."""
    trip = weight.detach().clone()
    trip += delta
    trip -= delta.to(weight.dtype)
    rows, cols = (trip != weight.detach()).nonzero(as_tuple=True)
    undo.elements += weight.numel()
    undo.changed += rows.numel()
    index_dtype = torch.int32 if weight.numel() < 2**31 else torch.int64
    kept = rows.numel() * (index_dtype.itemsize + weight.element_size())
    if kept >= weight.numel() * weight.element_size():
        return _Whole(weight, weight.detach().clone())
    flat = (rows * weight.shape[1] + cols).to(index_dtype)
    return _Sparse(weight, flat, weight.detach()[rows, cols].clone())
