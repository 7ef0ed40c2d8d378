"""ONNX files for the optimize stage: tidy an exported graph, quantize it to int8, open it in
onnxruntime (CPU)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from tuneship.optimize.machine import has_vnni, machine

MODEL_FILE = "model.onnx"


def drop_value_info(path: Path) -> None:
    """Remove the intermediate shape annotations of an exported graph, in place.

    They are optional, and the ones torch's exporter writes can contradict ONNX shape inference,
    which `quantize_dynamic` runs first (it then fails); onnxruntime infers shapes itself.
    """
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def quantize_int8(source: Path, target: Path, flags: list[str] | None = None) -> Path:
    """Dynamic int8 quantization of `source`'s weights (per channel; activations quantized at
    run time); `reduce_range` on CPUs without VNNI. Returns `target`."""
    flags = machine()["flags"] if flags is None else flags
    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(source), str(target), per_channel=True,
                     reduce_range=not has_vnni(flags), weight_type=QuantType.QInt8)
    return target


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime session on the CPU with all graph optimizations (`threads` intra-op)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """`logger` at WARNING for the duration (the exporter's optimizer logs every step at INFO)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
