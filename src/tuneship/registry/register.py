"""The register stage: log the model with MLflow's transformers flavor and mark it `challenger`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import transformers
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tuneship.config import ModelConfig, RegistryConfig, section
from tuneship.data.preprocess import load_prepared
from tuneship.errors import TuneshipError
from tuneship.redact import redact
from tuneship.registry.card import model_card
from tuneship.registry.lineage import git_commit, pinned
from tuneship.registry.tracking import stage_run
from tuneship.settings import project_root

log = logging.getLogger(__name__)
REGISTERED_FILE = "registered.json"
INPUT_EXAMPLE = ["a gripping, beautifully acted film", "a dull and lifeless mess"]


def run(cfg: DictConfig) -> dict:
    """Log `<work_dir>/model` as a registered model version with lineage tags and a card."""
    reg = section(cfg, "registry", RegistryConfig)
    model_cfg = section(cfg, "model", ModelConfig)
    work_dir = Path(cfg.paths.work_dir)
    report = _read_json(work_dir / "eval" / "report.json", "run the evaluate stage first")
    train = _read_json(work_dir / "model" / "train_result.json", "run the train stage first")
    stats = load_prepared(work_dir / "data").stats
    pipe = transformers.pipeline("text-classification", model=str(work_dir / "model"))
    with stage_run(reg, work_dir, "register") as run:
        lineage = {"run_id": run.info.run_id, "git_commit": git_commit(project_root()),
                   "data_fingerprint": stats["fingerprint"], "base_model": model_cfg.name,
                   "experiment": cfg.experiment_name}
        info = mlflow.transformers.log_model(
            transformers_model=pipe,
            name="model",
            task="text-classification",
            input_example=INPUT_EXAMPLE,  # MLflow infers the signature from it
            pip_requirements=pinned(),
            registered_model_name=reg.model_name,
            metadata={"label_names": stats["label_names"], **lineage},
        )
        version = str(info.registered_model_version)
        card = model_card(reg.model_name, version, lineage, stats, report, train)
        mlflow.log_text(card, "model_card.md")
        mlflow.log_dict(redact(OmegaConf.to_container(cfg, resolve=True)), "config/resolved.yaml")
    _tag_version(reg, version, lineage, report, card)
    result = {"name": reg.model_name, "version": version, "run_id": lineage["run_id"],
              "model_uri": f"models:/{reg.model_name}/{version}"}
    (work_dir / REGISTERED_FILE).write_text(json.dumps(result, indent=2))
    log.info("registered %s version %s as @%s", reg.model_name, version, reg.challenger_alias)
    return result


def _tag_version(reg: RegistryConfig, version: str, lineage: dict, report: dict,
                 card: str) -> None:
    client = MlflowClient()
    tags = {**lineage, **{f"metric.{k}": f"{v:.6f}" for k, v in report["metrics"].items()},
            "eval.rows": str(report["rows"])}
    for key, value in tags.items():
        client.set_model_version_tag(reg.model_name, version, key, str(value))
    client.update_model_version(reg.model_name, version, description=card)
    client.set_registered_model_alias(reg.model_name, reg.challenger_alias, version)


def _read_json(path: Path, hint: str) -> dict:
    if not path.is_file():
        raise TuneshipError(f"{path} not found: {hint}")
    return json.loads(path.read_text())
