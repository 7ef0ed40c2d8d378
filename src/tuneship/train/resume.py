"""Checkpoint bookkeeping: resume an interrupted run, never a finished or different one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from tuneship.errors import TuneshipError

log = logging.getLogger(__name__)
SIGNATURE_FILE = "tuneship-signature.json"


def checkpoint_to_resume(resume: str, ckpt_dir: Path, signature: dict) -> str | None:
    """What to pass to `Trainer.train(resume_from_checkpoint=...)`.

    `never` starts fresh; `auto` continues the last checkpoint if it was written by a run with the
    same data and config (else starts fresh); any other value is a checkpoint path.
    """
    if resume not in ("auto", "never"):
        if not Path(resume).is_dir():
            raise TuneshipError(f"train.resume={resume}: no such checkpoint folder")
        return resume
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if resume == "auto" and last and _signature(ckpt_dir) == signature:
        log.info("resuming from %s", last)
        return last
    if last:
        why = "train.resume=never" if resume == "never" else "data or config changed"
        log.warning("discarding checkpoints in %s (%s)", ckpt_dir, why)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / SIGNATURE_FILE).write_text(json.dumps(signature, sort_keys=True))
    return None


def _signature(ckpt_dir: Path) -> dict | None:
    path = ckpt_dir / SIGNATURE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def finish(ckpt_dir: Path) -> None:
    """Training ended well: the saved model is the result, checkpoints are no longer needed."""
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def step_of(checkpoint: str | None) -> int:
    """The global step a `checkpoint-<step>` folder was saved at (0 for a fresh start)."""
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0
