"""Where a model came from: git commit, data fingerprint, run id, package versions."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# What a served transformers model needs; passed to MLflow explicitly (its inference of
# requirements imports torchvision, which does not install beside this torch).
SERVING_PACKAGES = ("transformers", "torch", "tokenizers", "safetensors", "accelerate")


def git_commit(root: Path) -> str:
    """The checkout's commit (with `-dirty` when it has uncommitted changes), or `unknown`."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def pinned(packages: tuple[str, ...] = SERVING_PACKAGES) -> list[str]:
    """`name==version` for each installed package (the CPU torch wheel loses its +cpu tag)."""
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins
