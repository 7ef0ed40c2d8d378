"""The experiment's working folder: the one place that names what each stage leaves for the next.

    <work_dir>/run.json            the pipeline's MLflow run (tracking)
    <work_dir>/data/               processed splits + stats.json (preprocess)
    <work_dir>/checkpoints/        Trainer checkpoints while training (train)
    <work_dir>/model/              the trained model + train_result.json (train)
    <work_dir>/eval/report.json    test-split figures, with the stage's other reports (evaluate)
    <work_dir>/registered.json     the version this pipeline registered (register → promote)
    <work_dir>/optimize/           candidate runtimes being built and runtimes/manifest.json (optimize)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from tuneship.errors import TuneshipError

STATS_FILE = "stats.json"


@dataclass
class Prepared:
    """The processed splits and the figures that describe them."""

    splits: datasets.DatasetDict
    stats: dict


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @property
    def run_file(self) -> Path:
        return self.root / "run.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def train_result(self) -> Path:
        return self.model / "train_result.json"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def report(self) -> Path:
        return self.eval / "report.json"

    @property
    def registered(self) -> Path:
        return self.root / "registered.json"

    @property
    def optimize(self) -> Path:
        return self.root / "optimize"

    def save_prepared(self, prepared: Prepared) -> None:
        """Write atomically: a reader never sees a half-written dataset."""
        out = self.data
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".data-", dir=out.parent))
        prepared.splits.save_to_disk(str(tmp / "dataset"))
        (tmp / STATS_FILE).write_text(json.dumps(prepared.stats, indent=2))
        old = out.with_name(out.name + ".old")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)

    def load_prepared(self) -> Prepared:
        """What `save_prepared` wrote; a clear error if the preprocess stage has not run."""
        if not (self.data / STATS_FILE).is_file():
            raise TuneshipError(f"no processed dataset at {self.data}: run the preprocess stage "
                                "first")
        splits = datasets.load_from_disk(str(self.data / "dataset"))
        return Prepared(splits, json.loads((self.data / STATS_FILE).read_text()))

    @staticmethod
    def read(path: Path, hint: str) -> dict[str, Any]:
        """A JSON record left by an earlier stage; `hint` says which stage writes it."""
        if not path.is_file():
            raise TuneshipError(f"{path} not found: {hint}")
        return json.loads(path.read_text())

    @staticmethod
    def write(path: Path, record: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
