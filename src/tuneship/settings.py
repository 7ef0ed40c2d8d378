"""Process-wide settings: the serving contract (`bentos/runtime.py`), OmegaConf resolvers, threads.

Importing this module sets the offline hub variables (through `bentos/runtime.py`, the one place
that defines them) for this process and every process it starts.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from omegaconf import OmegaConf

from tuneship.errors import TuneshipError


def project_root() -> Path:
    """The checkout holding `conf/` (for an editable install), else the working directory."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "conf").is_dir() else Path.cwd()


@cache
def bento_module(name: str) -> ModuleType:
    """`bentos/<name>.py` loaded by path: the image carries only `bentos/`, so that side owns
    the serving contract (`runtime`: bento arguments, offline hub, device and threads;
    `adapter_refs`: registry references to adapters)."""
    path = project_root() / "bentos" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tuneship_bento_{name}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise TuneshipError(f"{path} not found: run Tuneship from its checkout")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


def bento_runtime() -> ModuleType:
    """`bentos/runtime.py`: the bento arguments, offline hub, device and thread rules."""
    return bento_module("runtime")


def register_resolvers() -> None:
    """Resolvers used by conf/: `${tuneship_root:}`."""
    if not OmegaConf.has_resolver("tuneship_root"):
        OmegaConf.register_new_resolver("tuneship_root", lambda: str(project_root()))


def pick_device(requested: str = "auto") -> str:
    """`auto` → cuda when available, else cpu; a clear error for cuda without a GPU."""
    try:
        return bento_runtime().device(requested)
    except ValueError as err:
        raise TuneshipError(f"train.device={requested}: {err}") from None


def set_threads(num_threads: int | None) -> None:
    """Pin torch's intra-op threads (the serving rule: all usable cores unless set)."""
    import torch

    torch.set_num_threads(bento_runtime().torch_threads(num_threads))


bento_runtime()  # the offline hub variables, before transformers or datasets are imported
register_resolvers()
