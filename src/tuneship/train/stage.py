"""The train stage: processed dataset in `<work_dir>/data` → fine-tuned model in `<work_dir>/model`."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import mlflow
from omegaconf import DictConfig

from tuneship.config import ModelConfig, RegistryConfig, TrainConfig, section
from tuneship.data.preprocess import load_prepared
from tuneship.registry.tracking import stage_run
from tuneship.settings import set_threads
from tuneship.train import model as modeling
from tuneship.train import resume
from tuneship.train.trainer import build_trainer, training_args

log = logging.getLogger(__name__)
RESULT_FILE = "train_result.json"


def run(cfg: DictConfig) -> dict:
    """Fine-tune, keep the best checkpoint by validation metric, save it; return train metrics."""
    model_cfg = section(cfg, "model", ModelConfig)
    train_cfg = section(cfg, "train", TrainConfig)
    reg = section(cfg, "registry", RegistryConfig)
    work_dir = Path(cfg.paths.work_dir)
    set_threads(train_cfg.num_threads)
    prepared = load_prepared(work_dir / "data")
    tokenizer = modeling.load_tokenizer(model_cfg)
    model = modeling.build_classifier(model_cfg, prepared.stats["label_names"], len(tokenizer))
    frozen = modeling.freeze_embeddings(model) if train_cfg.freeze_embeddings else 0
    frozen += modeling.freeze_bottom_layers(model, train_cfg.freeze_layers)
    ckpt_dir = work_dir / "checkpoints"
    signature = {"data": prepared.stats["fingerprint"], "model": model_cfg.model_dump(),
                 "train": train_cfg.model_dump(exclude={"resume"}), "seed": cfg.seed}
    # Under torchrun every rank runs this; only rank 0 touches MLflow and writes results.
    args = training_args(train_cfg, ckpt_dir, cfg.seed, report_to=["mlflow"])
    with args.main_process_first(desc="checkpoint bookkeeping"):
        checkpoint = resume.checkpoint_to_resume(train_cfg.resume, ckpt_dir, signature)
    main = args.process_index == 0
    with stage_run(reg, work_dir, "train") if main else contextlib.nullcontext():
        trainer = build_trainer(model, tokenizer, prepared.splits, args,
                                train_cfg.early_stopping_patience)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = {**result.metrics, "frozen_params": frozen, "world_size": args.world_size,
                   "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   "resumed_from_step": _step_of(checkpoint)}
        trainer.save_model(str(work_dir / "model"))  # rank 0 only (the Trainer checks)
        if main:
            _log_results(metrics, trainer, train_cfg.metric_for_best_model)
    if main:
        (work_dir / "model" / RESULT_FILE).write_text(json.dumps(metrics, indent=2))
        resume.finish(ckpt_dir)
    return metrics


def _log_results(metrics: dict, trainer, best_metric_name: str) -> None:
    mlflow.log_metrics({f"train.{k}": float(v) for k, v in metrics.items()
                        if isinstance(v, int | float)})
    if trainer.state.best_metric is not None:
        mlflow.log_metric(f"best_validation_{best_metric_name}", trainer.state.best_metric)


def _step_of(checkpoint: str | None) -> int:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0
