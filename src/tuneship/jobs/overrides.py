"""A job → the Hydra overrides of its one `tuneship.run_pipeline` call.

The base model's allow-list entry (`conf/jobs/default.yaml: models`) gives the experiment preset
and its overrides; the job adds its data file, seed, hyperparameters, its own work dir and
registered model name, and `train.resume=auto`:
- `n_epochs` → `train.epochs` (and `train.max_steps=-1`, so epochs decide);
- `batch_size` → `train.batch_size`;
- `learning_rate_multiplier` → `train.lr` = the preset's `train.lr` × multiplier.
"""

from __future__ import annotations

from pathlib import Path

from tuneship.jobs.config import BaseModelEntry

JOBS_EXPERIMENT = "tuneship-jobs"  # the MLflow experiment every job's run goes to
# What the uploaded data looks like to the pipeline (convert.py writes these columns). `++`: the
# data presets do not all declare every key.
DATA = {
    "causal_lm": ["++data.format=jsonl", "++data.prompt_column=prompt",
                  "++data.response_column=response", "++data.max_train_samples=null"],
    "classification": ["++data.format=jsonl", "++data.text_column=text", "++data.label_column=label",
                       "++data.label_names=null", "++data.given.validation=null",
                       "++data.given.test=null", "++data.max_rows=null",
                       "++data.max_train_samples=null", "++data.behaviour=null"],
}


def quote(value: str) -> str:
    """A string as a Hydra override value, whatever characters it holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def base_overrides(entry: BaseModelEntry) -> list[str]:
    """The preset a job of this base model starts from."""
    return [f"experiment={entry.experiment}", *entry.overrides]


def job_overrides(entry: BaseModelEntry, *, job_id: str, data_file: Path, work_dir: Path,
                  model_name: str, seed: int, hyper: dict, base_lr: float,
                  stages: list[str]) -> list[str]:
    """Every override of the job's pipeline call (`hyper` holds OpenAI's names)."""
    out = [*base_overrides(entry), *DATA[entry.task], f"data.source={quote(str(data_file))}",
           f"experiment_name={job_id}", f"paths.work_dir={quote(str(work_dir))}",
           f"registry.experiment={JOBS_EXPERIMENT}", f"registry.model_name={model_name}",
           f"seed={seed}", "train.resume=auto", f"stages=[{','.join(stages)}]"]
    if hyper.get("n_epochs", "auto") != "auto":
        out += [f"train.epochs={hyper['n_epochs']}", "train.max_steps=-1"]
    if hyper.get("batch_size", "auto") != "auto":
        out.append(f"train.batch_size={hyper['batch_size']}")
    if hyper.get("learning_rate_multiplier", "auto") != "auto":
        out.append(f"train.lr={base_lr * float(hyper['learning_rate_multiplier']):.6g}")
    return out
