"""The preprocess stage: prepare the dataset, save it atomically, open the pipeline's MLflow run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.data
from omegaconf import DictConfig

from tuneship.config import DataConfig, ModelConfig, RegistryConfig, section, validate_all
from tuneship.data.preprocess import prepare, save
from tuneship.registry.tracking import stage_run, start_pipeline_run
from tuneship.tracking_params import config_params
from tuneship.train.model import load_tokenizer


def run(cfg: DictConfig) -> dict:
    """Validate the whole config, prepare and save the data, log its stats and fingerprint."""
    validate_all(cfg)
    data_cfg = section(cfg, "data", DataConfig)
    reg = section(cfg, "registry", RegistryConfig)
    work_dir = Path(cfg.paths.work_dir)
    tokenizer = load_tokenizer(section(cfg, "model", ModelConfig))
    prepared = prepare(data_cfg, tokenizer, cfg.seed, cache_dir=f"{cfg.paths.cache_dir}/datasets")
    save(prepared, work_dir / "data")
    stats = prepared.stats
    start_pipeline_run(reg, work_dir, run_name=f"{cfg.experiment_name}-{stats['fingerprint'][:8]}")
    with stage_run(reg, work_dir, "preprocess"):
        mlflow.log_params(config_params(cfg))
        mlflow.set_tags({"data_fingerprint": stats["fingerprint"], "dataset": stats["dataset"]})
        mlflow.log_metrics(_numbers(stats))
        mlflow.log_dict(stats, "data/stats.json")
        for split, context in (("train", "training"), ("test", "testing")):
            frame = prepared.splits[split].select_columns(["text", "label"]).to_pandas()
            dataset = mlflow.data.from_pandas(frame, source=data_cfg.source, targets="label",
                                              name=f"{stats['dataset']}-{split}",
                                              digest=stats["fingerprint"])
            mlflow.log_input(dataset, context=context)
    return stats


def _numbers(stats: dict) -> dict[str, float]:
    flat = {f"data.rows_{k}": v for k, v in stats["rows"].items()}
    keys = ("rows_raw", "dropped_empty", "dropped_duplicates", "tokens_mean", "tokens_p95",
            "truncated_rows")
    return flat | {f"data.{k}": float(stats[k]) for k in keys}
