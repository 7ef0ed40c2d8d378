"""The causal-LM train stage: LoRA adapters on the base model, trained with `transformers.Trainer`.

Same bookkeeping as the classification stage (`tuneship.train`): step-based evaluation and
checkpoints, `train.resume=auto` continuing an interrupted run with the same data and config,
early stopping, the best checkpoint by validation loss kept. The result in `<work_dir>/model` is
the adapter, the tokenizer and `base_model.json` (the base it applies to).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import torch
from omegaconf import DictConfig
from transformers import EarlyStoppingCallback, PreTrainedTokenizerBase, Trainer

from tuneship.config import DataConfig, ModelConfig, RegistryConfig, TrainConfig, section
from tuneship.data.preprocess import load_prepared
from tuneship.errors import TuneshipError
from tuneship.lm import model as modeling
from tuneship.lm.data import IGNORE
from tuneship.registry.tracking import stage_run
from tuneship.settings import set_threads
from tuneship.train import resume
from tuneship.train.trainer import training_args

log = logging.getLogger(__name__)
RESULT_FILE = "train_result.json"


class CausalLMCollator:
    """Right-pads a batch; labels default to the input ids (corpus blocks); padding is -100.

    Unlike `DataCollatorForLanguageModeling`, labels equal to the pad id are kept: SmolLM2 pads
    with its end-of-turn token, which an instruction-tuned model must learn to emit.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_id, self.multiple = pad_token_id, pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        width = -(-longest // self.multiple) * self.multiple if len(rows) > 1 else longest
        ids, mask, labels = [], [], []
        for row in rows:
            n, pad = len(row["input_ids"]), width - len(row["input_ids"])
            ids.append(list(row["input_ids"]) + [self.pad_id] * pad)
            mask.append([1] * n + [0] * pad)
            labels.append(list(row.get("labels") or row["input_ids"]) + [IGNORE] * pad)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "labels": torch.tensor(labels)}


def run(cfg: DictConfig) -> dict:
    """Train LoRA adapters, keep the best checkpoint by validation loss; return train metrics."""
    data_cfg = section(cfg, "data", DataConfig)
    model_cfg = section(cfg, "model", ModelConfig)
    train_cfg = section(cfg, "train", TrainConfig)
    reg = section(cfg, "registry", RegistryConfig)
    if train_cfg.metric_for_best_model not in ("loss", "eval_loss"):
        raise TuneshipError("train.metric_for_best_model must be eval_loss for the causal_lm task "
                            f"(got {train_cfg.metric_for_best_model})")
    work_dir = Path(cfg.paths.work_dir)
    set_threads(train_cfg.num_threads)
    prepared = load_prepared(work_dir / "data")
    if prepared.stats.get("task") != "causal_lm":
        raise TuneshipError(f"{work_dir / 'data'} was not prepared for the causal_lm task: "
                            "run the preprocess stage again")
    tokenizer = modeling.load_tokenizer(model_cfg, cfg.paths.cache_dir)
    base, ref = modeling.build_base(model_cfg, tokenizer, cfg.paths.cache_dir, work_dir, cfg.seed)
    modeling.check_block_size(base, data_cfg.block_size)
    model = modeling.apply_lora(base, model_cfg.lora)
    ckpt_dir = work_dir / "checkpoints"
    signature = {"data": prepared.stats["fingerprint"], "model": model_cfg.model_dump(),
                 "base_sha256": ref.sha256, "train": train_cfg.model_dump(exclude={"resume"}),
                 "seed": cfg.seed}
    checkpoint = resume.checkpoint_to_resume(train_cfg.resume, ckpt_dir, signature)
    with stage_run(reg, work_dir, "train"):
        args = training_args(train_cfg, ckpt_dir, cfg.seed, report_to=["mlflow"])
        trainer = build_trainer(model, tokenizer, prepared.splits, args,
                                train_cfg.early_stopping_patience)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainable, total = model.get_nb_trainable_parameters()
        metrics = {**result.metrics, "trainable_params": trainable, "total_params": total,
                   "train_blocks": len(prepared.splits["train"]),
                   "resumed_from_step": int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0}
        out = work_dir / "model"
        trainer.save_model(str(out))  # the adapter (+ tokenizer), best checkpoint's weights
        ref.save(out)
        mlflow.log_metrics({f"train.{k}": float(v) for k, v in metrics.items()
                            if isinstance(v, int | float)})
        if trainer.state.best_metric is not None:
            mlflow.log_metric("best_validation_loss", trainer.state.best_metric)
        mlflow.set_tags({"base_model": ref.name, "base_model.sha256": str(ref.sha256)})
    (out / RESULT_FILE).write_text(json.dumps(metrics, indent=2))
    resume.finish(ckpt_dir)
    return metrics


def build_trainer(model, tokenizer: PreTrainedTokenizerBase, splits, args,
                  patience: int | None) -> Trainer:
    """A Trainer over token blocks or chat rows; no compute_metrics, so evaluation keeps only
    the loss (never the logits: vocabulary × tokens floats)."""
    callbacks = [EarlyStoppingCallback(early_stopping_patience=patience)] if patience else []
    return Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        data_collator=CausalLMCollator(tokenizer.pad_token_id),
        callbacks=callbacks,
    )
