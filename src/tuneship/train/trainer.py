"""Build and run a `transformers.Trainer` for sequence classification."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from tuneship.config import TrainConfig
from tuneship.metrics import load_combined
from tuneship.train.device import pick_device, pick_precision

log = logging.getLogger(__name__)


def training_args(cfg: TrainConfig, out_dir: Path, seed: int,
                  report_to: list[str]) -> TrainingArguments:
    """TrainingArguments from our config: step-based eval/save, best model kept, GPU auto."""
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    log.info("device=%s precision=%s", device, precision)
    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=cfg.metric_for_best_model,
        logging_steps=cfg.logging_steps,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        length_column_name="length",  # precomputed by the preprocess stage
        dataloader_num_workers=cfg.dataloader_workers,
        report_to=report_to,
        fsdp=cfg.fsdp,
        fsdp_config=cfg.fsdp_config,
        seed=seed,
        data_seed=seed,
        disable_tqdm=False,
    )


def classification_metrics(average: str = "macro"):
    """`compute_metrics` for the Trainer: the in-repo `evaluate` modules on validation."""
    accuracy = load_combined(["accuracy"])
    prf = load_combined(["precision", "recall", "f1"])

    def compute(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        preds = np.argmax(logits, axis=-1)
        return {**accuracy.compute(predictions=preds, references=labels),
                **prf.compute(predictions=preds, references=labels, average=average)}

    return compute


def build_trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, splits,
                  args: TrainingArguments, patience: int | None) -> Trainer:
    """A Trainer with dynamic padding and early stopping on the validation metric."""
    callbacks = [EarlyStoppingCallback(early_stopping_patience=patience)] if patience else []
    return Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        # Sorted by length: evaluation batches then pad little (order does not change scores).
        eval_dataset=splits["validation"].sort("length"),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        compute_metrics=classification_metrics(),
        callbacks=callbacks,
    )
