"""A `transformers.TrainerCallback` that reports a job's training to the store: step and loss
events, validation metrics, and a checkpoint object per saved checkpoint.

The job's process names it in `TUNESHIP_TRAINER_CALLBACKS` (read by the train stage) and hands
down the settings and the job id in the environment, so the Trainer builds it with no arguments.
"""

from __future__ import annotations

import os

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tuneship.jobs.config import from_env
from tuneship.jobs.store import Store

JOB_VAR = "TUNESHIP_JOB_ID"
MODEL_VAR = "TUNESHIP_JOB_MODEL"  # the job's registered model name (checkpoint names)


class JobProgress(TrainerCallback):
    def __init__(self) -> None:
        self.store = Store(from_env().database_url)
        self.job_id = os.environ[JOB_VAR]
        self.model_name = os.environ.get(MODEL_VAR, self.job_id)
        self.train_loss: float | None = None
        self.valid: dict[str, float] = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs) -> None:
        if not state.is_world_process_zero:
            return
        resumed = f", resumed from step {state.global_step}" if state.global_step else ""
        self.store.add_event(self.job_id, f"Training: {state.max_steps} steps{resumed}",
                             data={"total_steps": state.max_steps, "step": state.global_step})

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.train_loss = float(logs["loss"])
        data = {"step": state.global_step, "total_steps": state.max_steps,
                "train_loss": self.train_loss, "learning_rate": logs.get("learning_rate")}
        self.store.add_event(self.job_id, f"Step {state.global_step}/{state.max_steps}: "
                             f"training loss={self.train_loss:.4f}", type="metrics", data=data)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict | None = None, **kwargs) -> None:
        if not state.is_world_process_zero or not metrics:
            return
        self.valid = {f"valid_{k.removeprefix('eval_')}": float(v) for k, v in metrics.items()
                      if isinstance(v, int | float)
                      and not k.endswith(("runtime", "per_second", "epoch"))}
        shown = ", ".join(f"{k.removeprefix('valid_')}={v:.4f}" for k, v in self.valid.items())
        self.store.add_event(self.job_id, f"Step {state.global_step}/{state.max_steps}: "
                             f"validation {shown}", type="metrics",
                             data={"step": state.global_step, **self.valid})

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs) -> None:
        if not state.is_world_process_zero:
            return
        step = state.global_step
        metrics = {"step": float(step), "train_loss": self.train_loss,
                   "valid_loss": self.valid.get("valid_loss"), **self.valid}
        self.store.add_checkpoint(self.job_id, step, f"{self.model_name}:ckpt-step-{step}", metrics)
        self.store.add_event(self.job_id, f"Checkpoint created at step {step}",
                             data={"step": step})
