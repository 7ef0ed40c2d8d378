"""The experiment's config as flat MLflow params (`data.max_length`, `train.lr`, ...)."""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version

from omegaconf import DictConfig, OmegaConf

from tuneship.redact import redact

LOGGED_SECTIONS = ("task", "data", "model", "train", "eval")
VERSIONED = ("torch", "transformers", "peft", "datasets", "mlflow", "numpy")


def config_params(cfg: DictConfig) -> dict[str, str]:
    """Flatten the sections that define an experiment; values are cut to MLflow's 6000 chars."""
    flat: dict[str, str] = {"experiment": str(cfg.experiment_name), "seed": str(cfg.seed)}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        else:
            flat[prefix] = str(redact(node, prefix))[:6000]

    for name in (n for n in LOGGED_SECTIONS if n in cfg):
        walk(name, OmegaConf.to_container(cfg[name], resolve=True))
    return flat | versions()


def versions() -> dict[str, str]:
    """`version.<package>` of the libraries that decide a run's numbers."""
    found = {}
    for name in VERSIONED:
        with contextlib.suppress(PackageNotFoundError):
            found[f"version.{name}"] = version(name)
    return found
