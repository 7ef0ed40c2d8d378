"""Runtime files as the optimize stage writes them, for the serving tests: a model's ONNX export
and its dynamic int8 quantization."""

from __future__ import annotations

from pathlib import Path

import torch


def export_onnx(model: torch.nn.Module, folder: Path, vocab: int = 100) -> None:
    """`onnx-fp32/model.onnx` of `model` and its dynamic int8 quantization `onnx-int8/model.onnx`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    (folder / "onnx-fp32").mkdir(parents=True)
    (folder / "onnx-int8").mkdir()
    ids = torch.randint(5, vocab, (2, 7))
    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    torch.onnx.export(model, (ids, torch.ones_like(ids)), str(folder / "onnx-fp32/model.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes=axes, dynamo=False)
    quantize_dynamic(str(folder / "onnx-fp32/model.onnx"), str(folder / "onnx-int8/model.onnx"),
                     weight_type=QuantType.QInt8)
