"""The causal-LM register stage: log the adapter and a merged model; register the merged one.

Two things are logged to the pipeline's run:

- `adapter/`: the LoRA adapter (a few MB), its tokenizer and `base_model.json` — the base's name,
  source, path and SHA-256 of its weights — so the exact fine-tune can be re-applied, compared or
  merged again later.
- `model/`: the base with the adapter merged in (`merge_and_unload`), logged with
  `mlflow.transformers.log_model(task="text-generation")` and registered as the new version.

**The merged model is what is served** (`models:/<name>@champion`): it is one self-contained
MLflow model that loads as a plain transformers text-generation pipeline — no peft at serving
time, no base-model file to find on the serving host (the GGUF conversion lives in a local
cache), and no adapter overhead per token (same latency as the base). The adapter is the
lineage record, not the deployable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import transformers
from omegaconf import DictConfig, OmegaConf

from tuneship.config import EvalConfig, RegistryConfig, section
from tuneship.data.preprocess import load_prepared
from tuneship.lm.model import BASE_FILE, load_finetuned
from tuneship.registry.lineage import git_commit, pinned
from tuneship.registry.register import REGISTERED_FILE, _read_json, _tag_version
from tuneship.registry.tracking import stage_run
from tuneship.settings import project_root

log = logging.getLogger(__name__)
FALLBACK_EXAMPLE = "Once upon a time"


def run(cfg: DictConfig) -> dict:
    """Merge the adapter into its base, log both, register the merged model as @challenger."""
    reg = section(cfg, "registry", RegistryConfig)
    ev = section(cfg, "eval", EvalConfig)
    work_dir = Path(cfg.paths.work_dir)
    model_dir = work_dir / "model"
    report = _read_json(work_dir / "eval" / "report.json", "run the evaluate stage first")
    train = _read_json(model_dir / "train_result.json", "run the train stage first")
    stats = load_prepared(work_dir / "data").stats
    model, tokenizer, ref = load_finetuned(model_dir)
    merged = model.merge_and_unload()
    pipe = transformers.pipeline("text-generation", model=merged, tokenizer=tokenizer)
    chat = stats["kind"] == "instructions"
    with stage_run(reg, work_dir, "register") as run:
        lineage = {"run_id": run.info.run_id, "git_commit": git_commit(project_root()),
                   "data_fingerprint": stats["fingerprint"], "base_model": ref.name,
                   "base_model.source": ref.source, "base_model.sha256": str(ref.sha256),
                   "experiment": cfg.experiment_name}
        mlflow.log_artifacts(str(model_dir), artifact_path="adapter")
        info = mlflow.transformers.log_model(
            transformers_model=pipe,
            name="model",
            task="text-generation",
            input_example=[_example(work_dir)],
            # Instruction models answer a user turn: MLflow wraps each input in the chat format.
            prompt_template=prompt_template(tokenizer) if chat else None,
            pip_requirements=pinned(),  # without them MLflow's inference imports torchvision
            registered_model_name=reg.model_name,
            # Inference defaults (callers may override): the continuation only, greedy.
            model_config={"max_new_tokens": ev.max_new_tokens, "do_sample": False,
                          "repetition_penalty": 1.1, "return_full_text": False},
            metadata={**lineage, "base_model.path": ref.path, "served": "merged",
                      "adapter_artifact": "adapter"},
        )
        version = str(info.registered_model_version)
        card = model_card(reg.model_name, version, lineage, stats, report, train, ref.path)
        mlflow.log_text(card, "model_card.md")
        mlflow.log_dict(OmegaConf.to_container(cfg, resolve=True), "config/resolved.yaml")
    _tag_version(reg, version, lineage, report, card)
    result = {"name": reg.model_name, "version": version, "run_id": lineage["run_id"],
              "model_uri": f"models:/{reg.model_name}/{version}",
              "adapter_uri": f"runs:/{lineage['run_id']}/adapter"}
    (work_dir / REGISTERED_FILE).write_text(json.dumps(result, indent=2))
    log.info("registered %s version %s (merged; adapter in the run)", reg.model_name, version)
    return result


def _example(work_dir: Path) -> str:
    """The first sample prompt of the evaluation (a real test-split text), else a fallback."""
    samples = work_dir / "eval" / "samples.jsonl"
    first = samples.read_text().splitlines()[:1] if samples.is_file() else []
    return json.loads(first[0])["prompt"] if first else FALLBACK_EXAMPLE


def prompt_template(tokenizer) -> str:
    """The chat template's rendering of one user turn, with MLflow's `{prompt}` placeholder."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                         add_generation_prompt=True)
    return text.replace("{", "{{").replace("}", "}}").replace("\x00", "{prompt}")


def model_card(name: str, version: str, lineage: dict, stats: dict, report: dict, train: dict,
               base_path: str) -> str:
    """A markdown card: base, data, perplexities, training figures, what is served."""
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in report["metrics"].items())
    low, high = report["interval"]
    rows = " / ".join(str(stats["rows"][s]) for s in ("train", "validation", "test"))
    return f"""# Model card: {name} v{version}

A causal language model: **{lineage['base_model']}** with LoRA adapters fine-tuned by Tuneship on
**{stats['dataset']}** ({stats['kind']}), merged into the base for serving.

## Lineage
| | |
|---|---|
| MLflow run | `{lineage['run_id']}` |
| git commit | `{lineage['git_commit']}` |
| base model | `{lineage['base_model.source']}` → `{base_path}` |
| base weights SHA-256 | `{lineage['base_model.sha256']}` |
| adapter | run artifact `adapter/` (with `{BASE_FILE}`) |
| data source | `{stats['source']}` |
| data fingerprint | `{stats['fingerprint']}` |
| rows/blocks (train / validation / test) | {rows} (block size {stats['block_size']}) |

## Test split ({report['tokens']} predicted tokens), base vs fine-tuned
| metric | value |
|---|---|
{metrics}

perplexity: {report['confidence']:.0%} bootstrap interval [{low:.3f}, {high:.3f}].

## Training
{train.get('train_runtime', float('nan')):.0f} s, {train.get('trainable_params', 0):,} trainable
(LoRA) of {train.get('total_params', 0):,} parameters.

## Intended use and limits
Continuations in the style of the training text; sample generations are in `eval/samples.jsonl`.
The test split is carved from the same file as the training data (contiguous chunks, no overlap),
so perplexities on other text will be higher.
"""
