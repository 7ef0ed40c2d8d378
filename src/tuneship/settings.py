"""Process-wide settings: offline hub access, OmegaConf resolvers, threads and devices."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from omegaconf import OmegaConf

from tuneship.errors import TuneshipError

OFFLINE_VARS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def project_root() -> Path:
    """The checkout holding `conf/` (for an editable install), else the working directory."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "conf").is_dir() else Path.cwd()


def use_offline_hub() -> None:
    """Never wait on the model/dataset hub unless the user opted in (TUNESHIP_ONLINE=1)."""
    if os.environ.get("TUNESHIP_ONLINE") != "1":
        for key, value in OFFLINE_VARS.items():
            os.environ.setdefault(key, value)


def register_resolvers() -> None:
    """Resolvers used by conf/: `${tuneship_root:}`."""
    if not OmegaConf.has_resolver("tuneship_root"):
        OmegaConf.register_new_resolver("tuneship_root", lambda: str(project_root()))


def resolve_model_path(spec: str | None, cache_dir: str | Path | None = None) -> str | None:
    """Turn a model source into something `from_pretrained` loads.

    `pkg:<module>/<sub/dir>` is the folder inside that installed package (located without
    importing it: some model packages import heavy extras). `gguf:<module>/<file>.gguf` is
    converted once into a safetensors folder under `<cache_dir>/models/` (default: TUNESHIP_CACHE
    or `<checkout>/.cache`; see `tuneship.lm.gguf`). Anything else (a local path or a hub id) is
    returned unchanged.
    """
    if spec and spec.startswith("gguf:"):
        from tuneship.lm import gguf

        cache = cache_dir or os.environ.get("TUNESHIP_CACHE") or project_root() / ".cache"
        return str(gguf.resolve(spec, cache))
    if not spec or not spec.startswith("pkg:"):
        return spec
    return package_file(spec)


def package_file(spec: str) -> str:
    """The file or folder `pkg:<module>/<sub/path>` names inside an installed package."""
    module, _, sub = spec[4:].partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise TuneshipError(
            f"model package '{module}' is not installed (needed for '{spec}'); run `make setup`"
        )
    path = Path(list(found.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise TuneshipError(f"'{spec}' points to {path}, which does not exist")
    return str(path)


def set_threads(num_threads: int | None) -> None:
    """Pin torch's intra-op threads (all cores by default)."""
    import torch

    torch.set_num_threads(num_threads or os.cpu_count() or 1)


use_offline_hub()
register_resolvers()
