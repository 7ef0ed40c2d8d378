"""A model version's training data, found through its lineage.

`register` tags each version with the pipeline run id and the data fingerprint
(registry/register.py); the run carries its work dir (`tuneship.work_dir`, tracking.py), whose
`data/` holds the processed splits with the same fingerprint in `stats.json` (workdir.py).
A work dir whose data was re-made since (another fingerprint) is refused, not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuneship.errors import TuneshipError
from tuneship.workdir import WorkDir


@dataclass(frozen=True)
class Reference:
    """The reference sample (`text`, `label` names) and where it came from."""

    frame: pd.DataFrame
    fingerprint: str
    work_dir: Path
    split: str
    label_names: list[str]


def find_version(client: MlflowClient, name: str, version: str | None,
                 alias: str) -> ModelVersion:
    """The version asked for, else the one holding `alias`; a clear error if neither exists."""
    try:
        if version:
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        wanted = f"version {version}" if version else f"@{alias}"
        raise TuneshipError(f"registered model {name} {wanted} not found: {err.message}") \
            from None


def training_data(client: MlflowClient, mv: ModelVersion, split: str, rows: int,
                  seed: int) -> Reference:
    """Up to `rows` rows of the version's `split`, from the work dir its run recorded."""
    fingerprint, run_id = mv.tags.get("data_fingerprint"), mv.tags.get("run_id") or mv.run_id
    if not fingerprint or not run_id:
        raise TuneshipError(f"{mv.name} v{mv.version} has no lineage tags (data_fingerprint, "
                            f"run_id): was it registered by pipelines/register.py?")
    work_dir = client.get_run(run_id).data.tags.get("tuneship.work_dir")
    if not work_dir:
        raise TuneshipError(f"run {run_id} of {mv.name} v{mv.version} records no work dir "
                            f"(tag tuneship.work_dir)")
    prepared = WorkDir(Path(work_dir)).load_prepared()
    if prepared.stats["fingerprint"] != fingerprint:
        raise TuneshipError(
            f"{work_dir}/data has fingerprint {prepared.stats['fingerprint']}, but "
            f"{mv.name} v{mv.version} was trained on {fingerprint}: the data was re-made since; "
            f"re-run preprocess at the version's commit ({mv.tags.get('git_commit', '?')})")
    if split not in prepared.splits:
        raise TuneshipError(f"{work_dir}/data has no split {split!r} "
                            f"(has {sorted(prepared.splits)})")
    data = prepared.splits[split].select_columns(["text", "label"]).to_pandas()
    sample = data.sample(min(rows, len(data)), random_state=seed).reset_index(drop=True)
    names = list(prepared.stats["label_names"])
    sample["label"] = [names[i] for i in sample["label"]]
    return Reference(sample, fingerprint, Path(work_dir), split, names)
