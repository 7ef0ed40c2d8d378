"""The experiment's config as flat MLflow params (`data.max_length`, `train.lr`, ...)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tuneship.redact import redact

LOGGED_SECTIONS = ("data", "model", "train", "eval")


def config_params(cfg: DictConfig) -> dict[str, str]:
    """Flatten the sections that define an experiment; values are cut to MLflow's 6000 chars."""
    flat: dict[str, str] = {"experiment": str(cfg.experiment_name), "seed": str(cfg.seed)}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        else:
            flat[prefix] = str(redact(node, prefix))[:6000]

    for name in LOGGED_SECTIONS:
        walk(name, OmegaConf.to_container(cfg[name], resolve=True))
    return flat
