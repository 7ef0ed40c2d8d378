"""Where one job keeps its files: `<work_dir>/<job id>/` (input, pipeline work dir, log)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneship.jobs.config import JobsSettings
from tuneship.workdir import WorkDir


@dataclass(frozen=True)
class JobPaths:
    root: Path

    @classmethod
    def of(cls, settings: JobsSettings, job_id: str) -> JobPaths:
        return cls(Path(settings.work_dir) / job_id)

    @property
    def data_file(self) -> Path:
        """The upload converted to what the pipeline reads (convert.py)."""
        return self.root / "input" / "train.jsonl"

    @property
    def work(self) -> WorkDir:
        """The pipeline's `paths.work_dir`: data, checkpoints, model, eval, run.json."""
        return WorkDir(self.root / "pipeline")

    @property
    def log(self) -> Path:
        return self.root / "job.log"

    @property
    def launch(self) -> Path:
        """The ray executor's launch file: settings and environment for the job (launch.py)."""
        return self.root / "launch.json"

    def last_checkpoint_step(self) -> int:
        """The step of the newest `checkpoint-<step>` folder (0: none)."""
        steps = [int(p.name.rsplit("-", 1)[-1]) for p in self.work.checkpoints.glob("checkpoint-*")
                 if p.name.rsplit("-", 1)[-1].isdigit()]
        return max(steps, default=0)
