"""What `make bento` records about a version's runtimes and what the bento then requires."""

from types import SimpleNamespace

import pytest

from tuneship.errors import TuneshipError
from tuneship.serving.bento import runtime_packages
from tuneship.serving.model_store import runtimes_metadata

pytestmark = pytest.mark.unit
VERSION = SimpleNamespace(name="tuneship-x", version="3", run_id="abc123")
MANIFEST = {"reference": "torch-fp32", "machine": {}, "runtimes": [
    {"name": "onnx-int8", "kind": "onnx", "dtype": "int8", "file": "onnx-int8/model.onnx",
     "passed": True, "reason": None, "parity": {"agreement": 0.9954, "n": 872}},
    {"name": "torch-bf16", "kind": "torch", "dtype": "bfloat16", "file": None, "passed": True,
     "reason": None, "parity": {"agreement": 0.998, "n": 872}},
    {"name": "onnx-fp16", "kind": "onnx", "dtype": "float16", "file": "onnx-fp16/model.onnx",
     "passed": False, "reason": "accuracy drop 1.2 pt > 0.5 pt", "parity": {}},
]}


def test_the_metadata_lists_the_passed_runtimes_and_why_the_others_failed():
    meta = runtimes_metadata(MANIFEST, VERSION)
    assert meta["reference"] == "torch-fp32"
    assert meta["passed"] == ["onnx-int8", "torch-bf16"]
    assert meta["candidates"]["onnx-int8"] == {"kind": "onnx", "dtype": "int8",
                                               "parity": {"agreement": 0.9954, "n": 872}}
    assert meta["failed"] == {"onnx-fp16": "accuracy drop 1.2 pt > 0.5 pt"}


def test_a_malformed_manifest_is_a_clear_error():
    with pytest.raises(TuneshipError, match=r"tuneship-x v3: runs:/abc123/runtimes/manifest"
                                            r".json lacks 'kind'"):
        runtimes_metadata({"runtimes": [{"name": "onnx-int8", "passed": True}]}, VERSION)


@pytest.mark.parametrize(("manifest", "packages"), [
    (MANIFEST, ["onnxruntime"]),                               # a passed ONNX runtime
    ({"runtimes": [MANIFEST["runtimes"][1]]}, []),             # torch only: nothing more
    ({"runtimes": [MANIFEST["runtimes"][2]]}, []),             # ONNX, but it failed parity
])
def test_the_bento_requires_onnxruntime_only_for_a_passed_onnx_runtime(manifest, packages):
    assert runtime_packages({"runtimes": runtimes_metadata(manifest, VERSION)}) == packages
    assert runtime_packages({}) == []  # a model imported without runtimes
