"""Where the optimize stage's verdicts go: `runtimes/` artifacts on the version's source run
(the manifest and each passed file runtime) and `runtime.*` tags on the model version."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from tuneship.tasks.base import Candidate

ARTIFACT_DIR = "runtimes"
MANIFEST = "manifest.json"
PASSED_TAG = "runtimes.passed"
TAG_PREFIX = "runtime."


@dataclass
class Verdict:
    """One candidate's outcome: built (or not), its parity figures and the gate's reason."""

    name: str
    kind: str
    dtype: str
    parity: dict[str, float] = field(default_factory=dict)
    reason: str | None = None          # None: passed
    candidate: Candidate | None = None

    @property
    def passed(self) -> bool:
        return self.reason is None


def manifest(reference: str, machine: dict, verdicts: list[Verdict]) -> dict:
    """The manifest: each runtime with its parity; `file` (relative to `runtimes/`) only for a
    passed runtime with files, which are the ones logged."""
    return {"reference": reference, "machine": machine, "runtimes": [
        {"name": v.name, "kind": v.kind, "dtype": v.dtype, "file": _file(v), "passed": v.passed,
         "reason": v.reason, "parity": v.parity} for v in verdicts]}


def _file(verdict: Verdict) -> str | None:
    folder = verdict.candidate.folder if verdict.candidate else None
    if not verdict.passed or folder is None:
        return None
    return f"{verdict.name}/{_main_file(folder).name}"


def _main_file(folder: Path) -> Path:
    onnx = sorted(folder.glob("*.onnx"))
    if len(onnx) != 1:
        raise ValueError(f"{folder} should hold one .onnx file, holds {[p.name for p in onnx]}")
    return onnx[0]


def stage(out: Path, record: dict, verdicts: list[Verdict]) -> Path:
    """`out/runtimes/`: the manifest and each passed runtime's folder, ready to log."""
    folder = out / ARTIFACT_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for v in verdicts:
        if v.passed and v.candidate is not None and v.candidate.folder is not None:
            shutil.copytree(v.candidate.folder, folder / v.name)
    (folder / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def tags(verdicts: list[Verdict]) -> dict[str, str]:
    """The version tags: `runtimes.passed` and `runtime.<name>.{passed,reason,<figure>}`."""
    out = {PASSED_TAG: ",".join(v.name for v in verdicts if v.passed)}
    for v in verdicts:
        prefix = f"{TAG_PREFIX}{v.name}."
        out[prefix + "passed"] = str(v.passed).lower()
        if v.reason is not None:
            out[prefix + "reason"] = v.reason[:5000]
        out |= {prefix + key: _text(value) for key, value in v.parity.items()}
    return out


def _text(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6f}"


def publish(client: MlflowClient, version: ModelVersion, folder: Path,
            new_tags: dict[str, str]) -> None:
    """Log `folder` as the source run's `runtimes/` and set the tags, dropping `runtime.*` tags
    left by an earlier optimize run that this one did not set."""
    client.log_artifacts(version.run_id, str(folder), ARTIFACT_DIR)
    stale = [k for k in version.tags if k.startswith(TAG_PREFIX) and k not in new_tags]
    for key in stale:
        client.delete_model_version_tag(version.name, version.version, key)
    for key, value in new_tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)
