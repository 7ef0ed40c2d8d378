"""Optimized runtimes of a registered classifier, scored against its fp32 model: ONNX Runtime
fp32 and dynamic int8 (from `torch.onnx.export`), torch bf16 weights, torch dynamic int8.

Every runtime maps one padded batch (`input_ids`, `attention_mask`, `token_type_ids`: int64
arrays) to `logits`. Parity on the test split: `accuracy_delta` (candidate minus fp32 accuracy),
`agreement` (share of rows with fp32's label) and `n` (rows scored).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import mlflow
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion

from tuneship.config import OptimizeConfig
from tuneship.data.columns import column
from tuneship.errors import TuneshipError
from tuneship.optimize import onnx_files
from tuneship.tasks.base import Candidate, RuntimeSuite

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
if TYPE_CHECKING:
    from tuneship.context import StageContext

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]
EXAMPLE = ["a gripping, beautifully acted film", "a dull mess"]


class TorchRunner:
    """A torch module in eval mode (its own dtype or quantized layers); logits as fp32."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @torch.inference_mode()
    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        out = self.model(**{k: torch.from_numpy(v) for k, v in features.items()}).logits
        return out.float().numpy()


class OnnxRunner:
    """An onnxruntime session fed the inputs its graph declares."""

    def __init__(self, path: Path):
        self.session = onnx_files.session(path, torch.get_num_threads())
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: features[name] for name in self.inputs}
        return np.asarray(self.session.run(["logits"], feed)[0], dtype=np.float32)


def model_inputs(model: torch.nn.Module, tokenizer) -> list[str]:
    """The INPUTS both the tokenizer produces and the model's forward takes, in INPUTS order."""
    produced = set(tokenizer(EXAMPLE[:1]).keys())
    taken = set(inspect.signature(model.forward).parameters)
    return [name for name in INPUTS if name in produced and name in taken]


def export_onnx(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    """`folder/model.onnx`: `model` in fp32 through `torch.onnx.export` (the dynamo exporter),
    inputs `model_inputs` with dynamic batch and sequence axes, output `logits`, one file."""
    names = model_inputs(model, tokenizer)
    example = tokenizer(EXAMPLE, padding=True, return_tensors="pt")
    kwargs = {name: example[name] for name in names}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / onnx_files.MODEL_FILE
    with onnx_files.quiet("onnxscript"):  # one INFO line per folded constant otherwise
        torch.onnx.export(model.float().eval(), (), str(path), kwargs=kwargs, input_names=names,
                          output_names=["logits"], external_data=False, verbose=False,
                          dynamic_shapes={name: {0: batch, 1: sequence} for name in names})
    onnx_files.drop_value_info(path)
    return path


class ClassifierRuntimes(RuntimeSuite):
    """A version's classifier (fp32 reference) and the test rows, tokenized by its tokenizer."""

    runtimes: ClassVar[dict[str, tuple[str, str]]] = {
        "onnx-fp32": ("onnx", "float32"), "onnx-int8": ("onnx", "int8"),
        "torch-bf16": ("torch", "bfloat16"), "torch-int8": ("torch", "int8")}

    def __init__(self, model: torch.nn.Module, tokenizer, texts: list[str], labels: np.ndarray,
                 batch_size: int, max_length: int):
        self.model, self.tokenizer = model.float().eval(), tokenizer
        self.labels = np.asarray(labels)
        self.batches, self.order = _batches(tokenizer, model_inputs(model, tokenizer), texts,
                                            batch_size, max_length)
        self.reference_preds = self.predict(TorchRunner(self.model))
        self._fp32_onnx: Path | None = None

    def predict(self, runner: Runner) -> np.ndarray:
        """Labels of every test row, in the split's order."""
        logits = np.concatenate([runner(batch) for batch in self.batches])
        preds = np.empty(len(self.order), dtype=np.int64)
        preds[self.order] = logits.argmax(axis=-1)
        return preds

    def build(self, name: str, out: Path) -> Candidate:
        if name == "onnx-fp32":
            path = self._onnx(out.parent)
            return Candidate(name, OnnxRunner(path), path.parent)
        if name == "onnx-int8":
            path = onnx_files.quantize_int8(self._onnx(out.parent), out / onnx_files.MODEL_FILE)
            return Candidate(name, OnnxRunner(path), out)
        if name == "torch-bf16":
            return Candidate(name, TorchRunner(copy.deepcopy(self.model).to(torch.bfloat16)))
        if name == "torch-int8":
            return Candidate(name, TorchRunner(torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self.model), {torch.nn.Linear}, dtype=torch.qint8)))
        raise TuneshipError(f"unknown classifier runtime {name!r}; choose from {list(self.runtimes)}")

    def _onnx(self, build_dir: Path) -> Path:
        """The fp32 export under `build_dir/onnx-export/`, made once (onnx-int8 quantizes it)."""
        if self._fp32_onnx is None or not self._fp32_onnx.is_file():
            self._fp32_onnx = export_onnx(self.model, self.tokenizer, build_dir / "onnx-export")
        return self._fp32_onnx

    def parity(self, candidate: Candidate) -> dict[str, float]:
        return parity(self.predict(candidate.runner), self.reference_preds, self.labels)


def parity(preds: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy minus the reference's, the share of rows given the reference's label, rows."""
    delta = float(np.mean(preds == labels) - np.mean(reference == labels))
    return {"accuracy_delta": round(delta, 6), "agreement": round(float(np.mean(preds == reference)), 6),
            "n": len(preds)}


def _batches(tokenizer, names: list[str], texts: list[str], batch_size: int,
             max_length: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Padded int64 batches of `texts` sorted by length (each pads little), and that order."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [{name: encoded[name][i] for name in names} for i in order[start:start + batch_size]]
        padded = tokenizer.pad(rows, return_tensors="np")
        batches.append({name: padded[name].astype(np.int64) for name in names})
    return batches, order


def suite(ctx: StageContext, version: ModelVersion, cfg: OptimizeConfig) -> ClassifierRuntimes:
    """The version's fp32 classifier from the registry, over this pipeline's test split."""
    prepared = ctx.work.load_prepared()
    test = prepared.splits["test"]
    if cfg.max_rows:
        test = test.select(range(min(cfg.max_rows, len(test))))
    parts = mlflow.transformers.load_model(f"models:/{version.name}/{version.version}",
                                           return_type="components")
    model, tokenizer = parts["model"], parts["tokenizer"]
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if names != prepared.stats["label_names"]:
        raise TuneshipError(f"{version.name} v{version.version} predicts {names}, the test split "
                            f"has labels {prepared.stats['label_names']}: they cannot be compared")
    return ClassifierRuntimes(model, tokenizer, column(test, "text"), np.asarray(column(test, "label")),
                              cfg.batch_size, ctx.data.max_length)
