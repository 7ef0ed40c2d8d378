"""Causal LM: LoRA adapters on a base model (SmolLM2, or a random tiny Llama in tests), scored by
held-out perplexity of the base AND the fine-tuned model in the same run, served as a
`text-generation` model.

Both models are scored on the same test blocks (the adapter switched off, then on), so
`perplexity_reduction = 1 - test_perplexity / base_perplexity` compares like with like.
Instruction data is also scored with ROUGE-L and BLEU on generated responses; sample generations
of both models go to `eval/samples.jsonl`.

Registration registers the LoRA adapter itself as the model version (an MLflow transformers
text-generation model logged with `base_model_path`: adapter + tokenizer, a few MB), and the
base weights once under `registry.base_model_name`, found again by SHA-256 (registry.py). The
adapter folder as trained (with `base_model.json`) is also the run artifact `adapter/`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import transformers

from tuneship.errors import TuneshipError
from tuneship.evaluation import bootstrap
from tuneship.registry.lineage import pinned
from tuneship.settings import pick_device
from tuneship.tasks.base import Built, Logged, RuntimeSuite, Task
from tuneship.tasks.causal_lm import data, model, registry, scoring

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from tuneship.config import OptimizeConfig
    from tuneship.context import StageContext
    from tuneship.workdir import Prepared

SAMPLES_FILE = "samples.jsonl"
FALLBACK_EXAMPLE = "Once upon a time"


class CausalLM(Task):
    name = "causal_lm"
    mlflow_task = "text-generation"

    def tokenizer(self, ctx: StageContext):
        return model.load_tokenizer(ctx.model, ctx.cache_dir)

    def prepare(self, ctx: StageContext, tokenizer) -> Prepared:
        if any(ctx.data.given.values()):
            raise TuneshipError("data.given (split files) is supported for classification data "
                                "only; a corpus is cut into contiguous held-out chunks")
        return data.prepare(ctx.data, tokenizer, ctx.seed, cache_dir=str(ctx.cache_dir / "datasets"))

    def data_metrics(self, stats: dict) -> dict[str, float]:
        return {f"data.{k}_{split}": float(v) for k in ("rows", "tokens")
                for split, v in stats[k].items()}

    def logged_inputs(self, prepared: Prepared) -> dict[str, pd.DataFrame]:
        return {split: prepared.splits[split].select_columns(["input_ids"]).to_pandas()
                for split in ("train", "test")}

    def build_model(self, ctx: StageContext, prepared: Prepared, tokenizer) -> Built:
        if ctx.train.metric_for_best_model not in ("loss", "eval_loss"):
            raise TuneshipError("train.metric_for_best_model must be eval_loss for the causal_lm "
                                f"task (got {ctx.train.metric_for_best_model})")
        base, ref = model.build_base(ctx.model, tokenizer, ctx.cache_dir, ctx.work.root)
        model.check_block_size(base, ctx.data.block_size)
        peft_model = model.apply_lora(base, ctx.model.lora)
        trainable, total = peft_model.get_nb_trainable_parameters()
        return Built(peft_model, signature={"base_sha256": ref.sha256},
                     metrics={"total_params": total,
                              "train_blocks": len(prepared.splits["train"])},
                     tags={"base_model": ref.name, "base_model.sha256": str(ref.sha256)},
                     save_extra=ref.save)

    def trainer_kwargs(self, ctx: StageContext, prepared: Prepared, tokenizer) -> dict[str, Any]:
        # No compute_metrics: evaluation keeps only the loss (never vocabulary × tokens logits).
        return {"eval_dataset": prepared.splits["validation"],
                "data_collator": scoring.CausalLMCollator(tokenizer.pad_token_id)}

    def evaluate(self, ctx: StageContext, prepared: Prepared) -> dict:
        ev = ctx.eval
        unknown = set(ev.metrics) - set(scoring.KNOWN)
        if unknown:
            raise TuneshipError(f"eval.metrics {sorted(unknown)} do not apply to the causal_lm "
                                f"task; choose from {list(scoring.KNOWN)}")
        tuned, tokenizer, ref = model.load_finetuned(ctx.work.model)
        tuned.to(pick_device("auto"))
        test = prepared.splits["test"]
        with tuned.disable_adapter():
            base_nll, counts = scoring.block_nll(tuned, tokenizer, test, ev.batch_size)
        tuned_nll, _ = scoring.block_nll(tuned, tokenizer, test, ev.batch_size)
        base, fine = scoring.perplexity(base_nll, counts), scoring.perplexity(tuned_nll, counts)
        scores = {"perplexity": fine, "base_perplexity": base, "perplexity_reduction": 1 - fine / base}
        low, high = bootstrap.interval(
            lambda idx: float(np.exp(tuned_nll[idx].sum() / max(counts[idx].sum(), 1))),
            len(counts), ev.bootstrap_samples, ev.confidence, ctx.seed)
        samples = scoring.generation_report(tuned, tokenizer, test, ev, scores,
                                            prepared.stats["kind"])
        with (ctx.work.eval / SAMPLES_FILE).open("w") as handle:
            handle.writelines(json.dumps(s) + "\n" for s in samples)
        return {"metrics": scores, "interval": [low, high], "rows": len(test),
                "tokens": int(counts.sum()), "base_model": ref.name}

    def logged_metrics(self, report: dict) -> dict[str, float]:
        return {scoring.logged_name(k): v for k, v in report["metrics"].items()}

    def log_model(self, ctx: StageContext, prepared: Prepared, lineage: dict[str, str],
                  report: dict, train: dict) -> Logged:
        """Register the base once (by SHA-256) and the adapter as the new version."""
        stats, model_dir = prepared.stats, ctx.work.model
        tuned, tokenizer, ref = model.load_finetuned(model_dir)
        base_name = ctx.registry.base_model_name or ref.name
        base = registry.register_base(ctx.client(), base_name, ref, tokenizer)
        pipe = transformers.pipeline("text-generation", model=tuned, tokenizer=tokenizer)
        chat = stats["kind"] == "instructions"
        extra = {"base_model": ref.name, "base_model.source": ref.source,
                 "base_model.sha256": str(ref.sha256),
                 registry.BASE_TAG: f"{base.name}/{base.version}"}
        mlflow.log_artifacts(str(model_dir), artifact_path="adapter")
        info = mlflow.transformers.log_model(
            transformers_model=pipe, name="model", task=self.mlflow_task,
            base_model_path=ref.path,  # the adapter alone; the base is referenced, not copied
            input_example=[_example(ctx.work.eval / SAMPLES_FILE)],
            # Instruction models answer a user turn: MLflow wraps each input in the chat format.
            prompt_template=prompt_template(tokenizer) if chat else None,
            pip_requirements=[*pinned(), *pinned(("peft",))],
            registered_model_name=ctx.registry.model_name,
            # Inference defaults (callers may override): the continuation only, greedy.
            model_config={"max_new_tokens": ctx.eval.max_new_tokens, "do_sample": False,
                          "repetition_penalty": 1.1, "return_full_text": False},
            metadata={**lineage, **extra, "base_model.path": ref.path, "served": "adapter",
                      "adapter_artifact": "adapter"})
        card = f"""A LoRA adapter ({train.get('trainable_params', 0):,} trainable of
{train.get('total_params', 0):,} parameters) trained on {stats['kind']} data; this version holds
the adapter alone. Its base is `{base.name}` v{base.version} (from `{ref.source}`, SHA-256
`{ref.sha256}`); the service loads that base once and serves every adapter of it by name. Test:
{report.get('tokens', 0)} predicted tokens in blocks of {stats['block_size']}; base vs fine-tuned
in the table above. Sample generations are in `eval/samples.jsonl`. The test split is carved
from the same file as the training data (contiguous chunks, no overlap), so perplexities on
other text will be higher."""
        return Logged(info, card=card, lineage=extra,
                      result={"adapter_uri": f"runs:/{lineage['run_id']}/adapter",
                              "base_model_uri": f"models:/{base.name}/{base.version}"})

    def rescore(self, ctx: StageContext, version: ModelVersion, metric: str) -> float:
        """Perplexity of a registered version (an adapter, or an older merged model) on this
        pipeline's test blocks."""
        if metric != "perplexity":
            raise TuneshipError(f"cannot re-score champion v{version.version} on '{metric}' for "
                                "the causal_lm task: use registry.gate.metric=perplexity")
        prepared = ctx.work.load_prepared()
        lm, tokenizer = registry.load_scorable(ctx.client(), version,
                                               prepared.stats["tokenizer"])
        nll, counts = scoring.block_nll(lm, tokenizer, prepared.splits["test"],
                                        ctx.eval.batch_size)
        return scoring.perplexity(nll, counts)

    def runtime_suite(self, ctx: StageContext, version: ModelVersion,
                      cfg: OptimizeConfig) -> RuntimeSuite:
        """torch bf16 and int8 runtimes of the version's model (runtimes.py)."""
        from tuneship.tasks.causal_lm import runtimes

        return runtimes.suite(ctx, version, cfg)


def _example(samples) -> str:
    """The first sample prompt of the evaluation (a real test-split text), else a fallback."""
    first = samples.read_text().splitlines()[:1] if samples.is_file() else []
    return json.loads(first[0])["prompt"] if first else FALLBACK_EXAMPLE


def prompt_template(tokenizer) -> str:
    """The chat template's rendering of one user turn, with MLflow's `{prompt}` placeholder."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                         add_generation_prompt=True)
    return text.replace("{", "{{").replace("}", "}}").replace("\x00", "{prompt}")
