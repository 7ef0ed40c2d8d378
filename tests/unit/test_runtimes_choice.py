"""The classifier's runtimes (bentos/runtimes.py) on a tiny BERT exported to ONNX here: what a
manifest offers, the timed choice, a pinned runtime, and the errors for one that cannot serve."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.runtime_files import export_onnx

pytestmark = pytest.mark.unit
BENTOS = Path(__file__).resolve().parents[2] / "bentos"
SPEC = importlib.util.spec_from_file_location("runtimes", BENTOS / "runtimes.py")
runtimes = importlib.util.module_from_spec(SPEC)
sys.modules["runtimes"] = runtimes  # dataclasses resolve the module's annotations through it
SPEC.loader.exec_module(runtimes)

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


def export(model, folder: Path) -> None:
    """`onnx-fp32/model.onnx` and its dynamic int8 quantization `onnx-int8/model.onnx`."""
    export_onnx(model, folder, vocab=300)


MANIFEST = {"reference": "torch-fp32", "machine": {"cpu": "test"}, "runtimes": [
    {"name": "onnx-int8", "kind": "onnx", "dtype": "int8", "file": "onnx-int8/model.onnx",
     "passed": True, "reason": None, "parity": {"agreement": 0.996, "n": 872}},
    {"name": "onnx-fp32", "kind": "onnx", "dtype": "float32", "file": "onnx-fp32/model.onnx",
     "passed": True, "reason": None, "parity": {"agreement": 1.0, "n": 872}},
    {"name": "torch-bf16", "kind": "torch", "dtype": "bfloat16", "file": None, "passed": True,
     "reason": None, "parity": {"agreement": 0.995, "n": 872}},
    {"name": "torch-int8", "kind": "torch", "dtype": "int8", "file": None, "passed": True,
     "reason": None, "parity": {"agreement": 0.993, "n": 872}},
    {"name": "broken-int4", "kind": "onnx", "dtype": "int4", "file": "broken-int4/model.onnx",
     "passed": False, "reason": "agreement 0.61 < 0.99", "parity": {"agreement": 0.61}},
]}


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    """A model's runtimes/ as the optimize stage writes it."""
    root = tmp_path_factory.mktemp("model") / "runtimes"
    export(model, root)
    (root / "manifest.json").write_text(json.dumps(MANIFEST))
    return root


def tokens(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in tokenizer: one id per word, padded to the longest text."""
    rows = [[101, *(5 + sum(map(ord, w)) % 290 for w in t.split()), 102] for t in texts]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    return ids, (ids != 0).astype(np.int64)


def run(runtime, texts: list[str]) -> np.ndarray:
    return runtime.logits(*tokens(texts))


def eager(model):
    return runtimes.TorchRuntime("torch-fp32", model, "cpu")


def test_survey_sorts_the_manifest_into_usable_and_why_not(folder):
    found = runtimes.survey("torch-fp32", folder)
    assert found.names == ["torch-fp32", "onnx-int8", "onnx-fp32", "torch-bf16", "torch-int8"]
    assert found.unavailable == {"broken-int4": "failed parity: agreement 0.61 < 0.99"}
    assert found.parity["onnx-int8"] == {"agreement": 0.996, "n": 872}


def test_auto_times_every_usable_runtime_and_serves_the_fastest(model, folder):
    choice = runtimes.choose(eager(model), folder, "auto", run, threads=1)
    assert choice.chosen_by == "timing"
    assert set(choice.timings_ms) == {"torch-fp32", "onnx-int8", "onnx-fp32", "torch-bf16",
                                      "torch-int8"}
    assert all(set(t) == {"batch_1", "batch_16"} and min(t.values()) > 0
               for t in choice.timings_ms.values())
    assert choice.runtime.name == runtimes.fastest(choice.timings_ms)
    card = choice.card()
    assert card["name"] == choice.runtime.name and card["reference"] == "torch-fp32"
    assert card["speedup"]["torch-fp32"] == 1.0
    assert card["unavailable"] == {"broken-int4": "failed parity: agreement 0.61 < 0.99"}


def test_fastest_is_the_least_geometric_mean_not_the_best_at_one_size():
    timings = {"a": {"batch_1": 10.0, "batch_16": 100.0},   # geometric mean 31.6
               "b": {"batch_1": 4.0, "batch_16": 300.0},    # 34.6: best alone, worst batched
               "c": {"batch_1": 12.0, "batch_16": 70.0}}    # 29.0
    assert runtimes.fastest(timings) == "c"
    assert runtimes.speedups(timings, "a")["a"] == 1.0


@pytest.mark.parametrize("name", ["onnx-int8", "onnx-fp32", "torch-bf16", "torch-int8"])
def test_a_pinned_runtime_is_served_without_timing_and_agrees_with_fp32(model, folder, name):
    choice = runtimes.choose(eager(model), folder, name, run, threads=1)
    assert (choice.runtime.name, choice.chosen_by, choice.timings_ms) == (name, "config", {})
    texts = ["a gripping film", "a dull and lifeless mess of a film", "fine"]
    reference, got = run(eager(model), texts), run(choice.runtime, texts)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert np.abs(got - reference).max() < (1e-4 if name == "onnx-fp32" else 0.05)


def test_pinning_the_reference_loads_nothing_else(model, folder):
    choice = runtimes.choose(eager(model), folder, "torch-fp32", run, threads=1)
    assert (choice.runtime.name, choice.chosen_by) == ("torch-fp32", "config")


@pytest.mark.parametrize(("name", "why"), [
    ("broken-int4", "failed parity: agreement 0.61 < 0.99"),
    ("onnx-int4", "not among the model's recorded runtimes"),
])
def test_a_pinned_runtime_that_cannot_serve_is_a_clear_error(model, folder, name, why):
    with pytest.raises(RuntimeError) as err:
        runtimes.choose(eager(model), folder, name, run, threads=1)
    assert str(err.value) == (f"runtime {name!r} (bento argument runtime / TUNESHIP_RUNTIME) "
                              f"cannot be served: {why}; available here: torch-fp32, "
                              f"onnx-int8, onnx-fp32, torch-bf16, torch-int8 (or auto)")


def test_torch_int8_is_for_the_cpu_only(folder):
    found = runtimes.survey("torch-fp32", folder, device="cuda")
    assert found.unavailable["torch-int8"] == "torch int8 (dynamic quantization) runs on the CPU only"
    assert "torch-bf16" in found.names


def test_a_missing_file_or_kind_this_service_cannot_run_is_unavailable(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"runtimes": [
        {"name": "onnx-int8", "kind": "onnx", "dtype": "int8", "file": "onnx-int8/model.onnx",
         "passed": True},
        {"name": "openvino-int8", "kind": "openvino", "dtype": "int8", "passed": True}]}))
    found = runtimes.survey("torch-fp32", tmp_path)
    assert found.names == ["torch-fp32"]
    assert found.unavailable == {
        "onnx-int8": "file 'onnx-int8/model.onnx' is missing from the model's runtimes/",
        "openvino-int8": "kind 'openvino' is not one this service runs (torch, onnx)"}


def test_without_runtimes_the_reference_is_the_only_one(model, tmp_path):
    choice = runtimes.choose(eager(model), tmp_path / "absent", "auto", run, threads=1)
    assert (choice.runtime.name, choice.chosen_by) == ("torch-fp32", "only")


def test_a_malformed_manifest_names_the_entry(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"runtimes": [{"name": "x"}]}))
    with pytest.raises(ValueError, match=r"runtimes\[0\] lacks 'kind'"):
        runtimes.survey("torch-fp32", tmp_path)
