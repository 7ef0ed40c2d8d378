"""A bento whose model carries optimized runtimes, served for real (`bentoml serve`).

The smoke champion of the `served` session (conftest.py) gets what the optimize stage records
in its run: `runtimes/manifest.json` with ONNX fp32 and int8 exports of its own weights
(torch.onnx.export + onnxruntime's dynamic quantization, made here), torch bf16 and a candidate
that failed parity, plus the version tags. `make bento` (pipelines/bento.py) then imports the
version again into a fresh BentoML home and builds a bento that carries them and onnxruntime.
Served with the runtime chosen by timing, pinned to ONNX int8, and pinned to the failed one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import (
    NAME,
    ROOT,
    TEXTS,
    Served,
    Server,
    isolated_env,
    run_script,
    serving,
)
from tests.runtime_files import export_onnx

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MORE_TEXTS = [*TEXTS, "not bad at all", "a waste of a good cast", "I loved every minute",
              "boring", "the best film of the year", "it never gets going"]
FAILED = "onnx-int4"


@dataclass
class Optimized:
    env: dict[str, str]
    bento: str
    home: Path
    run_id: str


def export(model_dir: Path, folder: Path) -> None:
    """`onnx-fp32/model.onnx` of the model's own weights and its dynamic int8 quantization."""
    from transformers import AutoModelForSequenceClassification

    export_onnx(AutoModelForSequenceClassification.from_pretrained(model_dir).eval(), folder)


def manifest() -> dict:
    parity = {"accuracy_delta": 0.0, "agreement": 1.0, "n": 80}
    return {"reference": "torch-fp32", "machine": {"cpu": "test"}, "runtimes": [
        {"name": "onnx-int8", "kind": "onnx", "dtype": "int8", "file": "onnx-int8/model.onnx",
         "passed": True, "reason": None, "parity": parity},
        {"name": "onnx-fp32", "kind": "onnx", "dtype": "float32",
         "file": "onnx-fp32/model.onnx", "passed": True, "reason": None, "parity": parity},
        {"name": "torch-bf16", "kind": "torch", "dtype": "bfloat16", "file": None,
         "passed": True, "reason": None, "parity": parity},
        {"name": FAILED, "kind": "onnx", "dtype": "int4", "file": None, "passed": False,
         "reason": "agreement 0.62 < 0.99", "parity": {"agreement": 0.62, "n": 80}}]}


@pytest.fixture(scope="session")
def optimized(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Optimized:
    """The champion's run gets runtimes/ (as the optimize stage writes it); a new bento."""
    import mlflow
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("runtimes")
    client = MlflowClient(served.tracking_uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    # The version's storage location asked of this registry: a `models:/` URI would be resolved
    # against the process's default registry, which earlier tests may have set elsewhere.
    files = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(NAME, version.version),
        dst_path=str(tmp / "model"), tracking_uri=served.tracking_uri))
    export(files / "model", tmp / "runtimes")
    (tmp / "runtimes" / "manifest.json").write_text(json.dumps(manifest()))
    client.log_artifacts(version.run_id, str(tmp / "runtimes"), "runtimes")
    client.set_model_version_tag(NAME, version.version, "runtimes.passed",
                                 "onnx-int8,onnx-fp32,torch-bf16")
    env = {**isolated_env(tmp), "MLFLOW_TRACKING_URI": served.tracking_uri}
    run_script("bento.py", ["experiment=smoke"], env, timeout=240)
    return Optimized(env, f"{NAME}:latest", tmp / "bentoml", version.run_id)


@pytest.fixture(scope="session")
def auto(optimized: Optimized) -> Iterator[Server]:
    with serving(optimized.env, optimized.home.parent / "auto.log", optimized.bento) as server:
        yield server


@pytest.fixture(scope="session")
def int8(optimized: Optimized) -> Iterator[Server]:
    env = {**optimized.env, "TUNESHIP_RUNTIME": "onnx-int8"}
    with serving(env, optimized.home.parent / "int8.log", optimized.bento) as server:
        yield server


def test_the_bento_carries_the_runtimes_and_onnxruntime(optimized):
    from importlib.metadata import version

    bentos = optimized.home / "bentos" / NAME
    bento_dir = bentos / (bentos / "latest").read_text().strip()
    requirements = (bento_dir / "env/python/requirements.txt").read_text().split()
    assert f"onnxruntime=={version('onnxruntime')}" in requirements
    assert not [r for r in requirements if "onnxruntime-gpu" in r or r.startswith("nvidia")]
    spec = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert spec["args"]["runtime"] == "auto"
    name, version = spec["models"][0]["tag"].split(":")
    model_dir = optimized.home / "models" / name / version  # the bento's model, in the store
    assert json.loads((model_dir / "runtimes/manifest.json").read_text()) == manifest()
    assert (model_dir / "runtimes/onnx-int8/model.onnx").is_file()
    recorded = yaml.safe_load((model_dir / "model.yaml").read_text())["metadata"]["runtimes"]
    assert recorded["passed"] == ["onnx-fp32", "onnx-int8", "torch-bf16"]
    assert recorded["failed"] == {FAILED: "agreement 0.62 < 0.99"}


def test_auto_serves_the_fastest_runtime_and_says_why(auto):
    runtime = httpx.get(f"{auto.url}/model", timeout=30).json()["runtime"]
    timings = runtime["timings_ms"]
    assert runtime["chosen_by"] == "timing" and runtime["reference"] == "torch-fp32"
    assert set(timings) == {"torch-fp32", "onnx-int8", "onnx-fp32", "torch-bf16"}
    best = min(timings, key=lambda n: timings[n]["batch_1"] * timings[n]["batch_16"])
    assert runtime["name"] == best
    assert runtime["unavailable"] == {FAILED: "failed parity: agreement 0.62 < 0.99"}
    metrics = httpx.get(f"{auto.url}/metrics", timeout=30).text
    assert re.search(rf'^tuneship_runtime_info\{{chosen_by="timing",runtime="{best}"\}} 1\.0$',
                     metrics, flags=re.M), metrics[-2000:]


def test_an_onnx_int8_bento_serves_classify_with_the_fp32_labels(int8, served):
    runtime = httpx.get(f"{int8.url}/model", timeout=30).json()["runtime"]
    assert (runtime["name"], runtime["chosen_by"]) == ("onnx-int8", "config")
    body = {"texts": MORE_TEXTS, "all_scores": True}
    got = httpx.post(f"{int8.url}/classify", json=body, timeout=30)
    fp32 = httpx.post(f"{served.open.url}/classify", json=body, timeout=30)
    assert got.status_code == fp32.status_code == 200, got.text
    got_p, fp32_p = got.json()["predictions"], fp32.json()["predictions"]
    assert [p["label"] for p in got_p] == [p["label"] for p in fp32_p]
    for mine, theirs in zip(got_p, fp32_p, strict=True):
        assert mine["scores"] == pytest.approx(theirs["scores"], abs=0.02)
    assert got.json()["model"] == fp32.json()["model"]  # the same registered version


@pytest.mark.parametrize(("runtime", "why"), [
    (FAILED, "failed parity: agreement 0.62 < 0.99"),
    ("openvino-int8", "not among the model's recorded runtimes"),
])
def test_a_pinned_runtime_that_cannot_serve_fails_the_start(optimized, runtime, why):
    log = optimized.home.parent / f"pinned-{runtime}.log"
    command = [str(Path(sys.executable).with_name("bentoml")), "serve", optimized.bento,
               "--host", "127.0.0.1", "--port", "0"]
    start = time.monotonic()
    done = subprocess.run(command, env={**optimized.env, "TUNESHIP_RUNTIME": runtime}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    log.write_text(done.stdout + done.stderr)
    assert done.returncode != 0
    assert (f"runtime {runtime!r} (bento argument runtime / TUNESHIP_RUNTIME) cannot be "
            f"served: {why}; available here: torch-fp32, onnx-int8, onnx-fp32, torch-bf16"
            ) in done.stdout + done.stderr
    assert time.monotonic() - start < 60  # at once, not after a worker restart loop
