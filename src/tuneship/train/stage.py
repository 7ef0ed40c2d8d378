"""The train stage: processed dataset in `<work_dir>/data` → trained model in `<work_dir>/model`.

Under torchrun every rank runs this; only rank 0 touches MLflow and writes results.
"""

from __future__ import annotations

import importlib
import logging
import os

import mlflow
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, set_seed

from tuneship.context import StageContext
from tuneship.errors import TuneshipError
from tuneship.settings import set_threads
from tuneship.train import resume
from tuneship.train.trainer import resolved, training_args

log = logging.getLogger(__name__)
# Extra callbacks, "module:Class,...", each built with no arguments (the jobs service's progress).
CALLBACKS_VAR = "TUNESHIP_TRAINER_CALLBACKS"


def extra_callbacks() -> list[TrainerCallback]:
    """The `TrainerCallback`s named in `TUNESHIP_TRAINER_CALLBACKS`."""
    named = [n.strip() for n in os.environ.get(CALLBACKS_VAR, "").split(",") if n.strip()]
    try:
        return [getattr(importlib.import_module(m), c)() for m, _, c in
                (n.partition(":") for n in named)]
    except (ImportError, AttributeError) as err:
        raise TuneshipError(f"{CALLBACKS_VAR}={os.environ[CALLBACKS_VAR]!r}: {err}") from None


def run(ctx: StageContext) -> dict:
    """Train, keep the best checkpoint by the validation metric, save it; return train metrics."""
    cfg = ctx.train
    set_threads(cfg.num_threads)
    prepared = ctx.work.load_prepared()
    if prepared.stats.get("task", "classification") != ctx.task.name:
        raise TuneshipError(f"{ctx.work.data} was not prepared for the {ctx.task.name} task: "
                            "run the preprocess stage again")
    tokenizer = ctx.task.tokenizer(ctx)
    set_seed(ctx.seed)  # before the model is built: its random init (heads, LoRA) is seeded too
    built = ctx.task.build_model(ctx, prepared, tokenizer)
    signature = {"data": prepared.stats["fingerprint"], "model": ctx.model.model_dump(),
                 "train": cfg.model_dump(exclude={"resume"}), "seed": ctx.seed, **built.signature}
    args = training_args(cfg, ctx.work.checkpoints, ctx.seed, report_to=["mlflow"])
    with args.main_process_first(desc="checkpoint bookkeeping"):
        checkpoint = resume.checkpoint_to_resume(cfg.resume, ctx.work.checkpoints, signature)
    main = args.process_index == 0
    with ctx.stage_run("train", main=main):
        if main:
            mlflow.log_params(resolved(args))  # what `auto` chose on this machine
        callbacks = ([EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)]
                     if cfg.early_stopping_patience else []) + extra_callbacks()
        trainer = Trainer(model=built.model, args=args, train_dataset=prepared.splits["train"],
                          processing_class=tokenizer, callbacks=callbacks,
                          **ctx.task.trainer_kwargs(ctx, prepared, tokenizer))
        result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = {**result.metrics, **built.metrics, "world_size": args.world_size,
                   "trainable_params": sum(p.numel() for p in built.model.parameters()
                                           if p.requires_grad),
                   "resumed_from_step": resume.step_of(checkpoint)}
        trainer.save_model(str(ctx.work.model))  # rank 0 only (the Trainer checks)
        if main:
            mlflow.log_metrics({f"train.{k}": float(v) for k, v in metrics.items()
                                if isinstance(v, int | float)})
            if trainer.state.best_metric is not None:
                name = cfg.metric_for_best_model.removeprefix("eval_")
                mlflow.log_metric(f"best_validation_{name}", trainer.state.best_metric)
            mlflow.set_tags(built.tags)
    if main:
        if built.save_extra:
            built.save_extra(ctx.work.model)
        ctx.work.write(ctx.work.train_result, metrics)
        resume.finish(ctx.work.checkpoints)
    return metrics

