"""A job's environment when its process is not the worker's child (the ray executor).

Ray shows a job's entrypoint, metadata and `runtime_env` to anyone who can reach its dashboard,
so those carry only the job id and the path of this launch file (`TUNESHIP_JOBS_LAUNCH`). The
file holds what the local worker passes through its child's environment: the settings (whose
`database_url` may hold a password) and the forwarded variables. It is written with mode 0600
in the job's folder, which every Ray node must see (shared storage), and removed when the job ends.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from tuneship.errors import TuneshipError
from tuneship.settings import project_root

LAUNCH_VAR = "TUNESHIP_JOBS_LAUNCH"


def write(path: Path, env: dict[str, str]) -> None:
    """Atomically, readable by its owner only (created 0600, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(env, out)
    os.replace(tmp, path)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def apply() -> None:
    """In a job's process: the environment from the launch file named by `TUNESHIP_JOBS_LAUNCH`
    (if set), and the checkout as working directory, as the local worker's child has them."""
    path = os.environ.get(LAUNCH_VAR)
    if not path:
        return
    try:
        env = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise TuneshipError(f"cannot read the job's launch file {path}: {err} (on a multi-node Ray "
                            "cluster, state_dir must be on storage every node mounts)") from None
    os.environ.update(env)
    os.chdir(project_root())
