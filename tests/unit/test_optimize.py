"""The optimize stage's parts that need no model: the parity gate, the CPU facts, the manifest
and tags it records, and its config section."""

import pytest

from tests.conftest import compose_config
from tuneship.config import OptimizeConfig, OptimizeGateConfig, section, validate_all
from tuneship.errors import TuneshipError
from tuneship.optimize import gate, machine, record
from tuneship.tasks.base import Candidate

pytestmark = pytest.mark.unit
RULES = OptimizeGateConfig()  # 0.5 pt accuracy drop, 99 % agreement, 2 % perplexity rise


@pytest.mark.parametrize("parity", [
    {"accuracy_delta": -0.005, "agreement": 0.99, "n": 872},  # both on the line
    {"accuracy_delta": 0.01, "agreement": 1.0, "n": 10},
    {"perplexity_ratio": 1.02, "perplexity": 40.8, "reference_perplexity": 40.0},
    {"perplexity_ratio": 0.97, "perplexity": 38.8, "reference_perplexity": 40.0},
])
def test_gate_passes_a_runtime_inside_every_rule(parity):
    assert gate.judge(RULES, parity) is None


@pytest.mark.parametrize(("parity", "reason"), [
    ({"accuracy_delta": -0.0069, "agreement": 0.995}, "accuracy drop 0.0069 > 0.005"),
    ({"accuracy_delta": 0.0, "agreement": 0.981}, "agreement 0.9810 < 0.99"),
    ({"accuracy_delta": -0.02, "agreement": 0.9}, "accuracy drop 0.0200 > 0.005; agreement 0.9000 < 0.99"),
    ({"perplexity_ratio": 1.0301}, "perplexity ratio 1.0301 > 1.02"),
    ({"n": 3}, "no parity figure the gate knows (got ['n'])"),
])
def test_gate_names_every_broken_rule(parity, reason):
    assert gate.judge(RULES, parity) == reason


def test_gate_follows_the_config():
    loose = OptimizeGateConfig(max_accuracy_drop=0.05, min_agreement=0.9, max_perplexity_rise=0.1)
    assert gate.judge(loose, {"accuracy_delta": -0.02, "agreement": 0.95}) is None
    assert gate.judge(loose, {"perplexity_ratio": 1.08}) is None


def test_machine_reads_model_and_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                       "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile "
                       "amx_int8\nprocessor\t: 1\n")
    found = machine.machine(cpuinfo)
    assert found == {"cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
                     "flags": ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                               "amx_int8", "amx_tile"]}
    assert machine.machine(tmp_path / "missing") == {"cpu_model": None, "flags": []}


@pytest.mark.parametrize(("flags", "vnni"), [
    (["avx2"], False), (["avx2", "avx512f"], False), (["avx2", "avx_vnni"], True),
    (["avx512f", "avx512_vnni"], True), (["amx_int8"], True)])
def test_reduce_range_only_without_vnni(flags, vnni):
    assert machine.has_vnni(flags) is vnni


def _verdicts(tmp_path):
    folder = tmp_path / "built" / "onnx-int8"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    return [
        record.Verdict("onnx-int8", "onnx", "int8", {"accuracy_delta": -0.0011, "agreement": 0.9954,
                                                     "n": 872}, None, Candidate("onnx-int8", None, folder)),
        record.Verdict("torch-bf16", "torch", "bfloat16", {"accuracy_delta": 0.0, "agreement": 0.981,
                                                           "n": 872}, "agreement 0.981 < 0.99",
                       Candidate("torch-bf16", None)),
        record.Verdict("onnx-fp32", "onnx", "float32", reason="build failed: RuntimeError: no"),
    ]


def test_manifest_lists_every_runtime_and_files_only_for_passed_ones(tmp_path):
    verdicts = _verdicts(tmp_path)
    cpu = {"cpu_model": "AMD EPYC", "flags": ["avx2"]}
    manifest = record.manifest("torch-fp32", cpu, verdicts)
    assert manifest["reference"] == "torch-fp32" and manifest["machine"] == cpu
    assert manifest["runtimes"][0] == {
        "name": "onnx-int8", "kind": "onnx", "dtype": "int8", "file": "onnx-int8/model.onnx",
        "passed": True, "reason": None,
        "parity": {"accuracy_delta": -0.0011, "agreement": 0.9954, "n": 872}}
    assert [(r["file"], r["passed"], r["reason"]) for r in manifest["runtimes"][1:]] == [
        (None, False, "agreement 0.981 < 0.99"), (None, False, "build failed: RuntimeError: no")]
    folder = record.stage(tmp_path / "out", manifest, verdicts)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "manifest.json", "onnx-int8/model.onnx"]


def test_tags_name_passed_runtimes_reasons_and_figures(tmp_path):
    tags = record.tags(_verdicts(tmp_path))
    assert tags["runtimes.passed"] == "onnx-int8"
    assert tags["runtime.onnx-int8.passed"] == "true"
    assert "runtime.onnx-int8.reason" not in tags
    assert tags["runtime.onnx-int8.agreement"] == "0.995400"
    assert tags["runtime.onnx-int8.n"] == "872"
    assert tags["runtime.torch-bf16.passed"] == "false"
    assert tags["runtime.torch-bf16.reason"] == "agreement 0.981 < 0.99"
    assert tags["runtime.onnx-fp32.reason"].startswith("build failed")
    assert record.tags(_verdicts(tmp_path)[1:])["runtimes.passed"] == ""


def test_each_task_has_its_candidates_by_default():
    assert section(compose_config(["experiment=smoke"]), "optimize", OptimizeConfig).candidates == [
        "onnx-fp32", "onnx-int8", "torch-bf16"]
    lm = section(compose_config(["experiment=smoke_lm"]), "optimize", OptimizeConfig)
    assert lm.candidates == ["torch-bf16", "torch-int8"] and lm.version == "auto"
    assert section(compose_config(["optimize.version=3"]), "optimize", OptimizeConfig).version == "3"


@pytest.mark.parametrize(("override", "message"), [
    ("optimize.gate.min_agreement=1.5", "optimize.gate.min_agreement"),
    ("optimize.gate.max_accuracy_drop=-0.1", "optimize.gate.max_accuracy_drop"),
    ("optimize.version=latest", "optimize.version"),
    ("optimize.candidates=[onnx-int8,onnx-int8]", "lists a runtime twice"),
    ("optimize.batch_size=0", "optimize.batch_size"),
])
def test_bad_optimize_values_name_the_key(override, message):
    with pytest.raises(TuneshipError, match="bad config value") as err:
        validate_all(compose_config(["experiment=smoke", override]))
    assert message in str(err.value)
