"""`transformers.TrainingArguments` from `train:`: step-based evaluation and checkpoints, the best
checkpoint kept, the device and precision chosen for the hardware."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainingArguments

from tuneship.config import TrainConfig
from tuneship.errors import TuneshipError
from tuneship.settings import pick_device
from tuneship.train.hardware import AMX_BF16, AVX512_BF16, FlagReader, cpu_bf16, cpu_flags

log = logging.getLogger(__name__)


def pick_precision(requested: str, device: str, flags: FlagReader = cpu_flags) -> str:
    """`auto` → bf16 on Ampere+ GPUs, fp16 on older GPUs; on a CPU bf16 (autocast) where it has
    AMX-BF16 or AVX512-BF16 (`flags` reads the CPU's flags), else fp32.

    Raises TuneshipError for fp16 on a CPU, or bf16 on a CPU without those instructions.
    """
    bf16_unit = cpu_bf16(flags) if device == "cpu" else None
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if bf16_unit else "fp32"
    if device == "cpu" and requested == "fp16":
        raise TuneshipError("train.precision=fp16 needs a GPU; use auto, bf16 or fp32")
    if device == "cpu" and requested == "bf16" and not bf16_unit:
        raise TuneshipError("train.precision=bf16 on a CPU needs AMX-BF16 or AVX512-BF16 "
                            f"({AMX_BF16} / {AVX512_BF16} in /proc/cpuinfo), which this CPU "
                            "lacks; use auto or fp32")
    return requested


def resolved(args: TrainingArguments) -> dict[str, str]:
    """The device and precision `args` train with, as run params (`train.precision` may be auto)."""
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {"train.resolved_device": "cpu" if args.use_cpu else args.device.type,
            "train.resolved_precision": precision}


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
