"""`run_pipeline`: the lifecycle as one call for programs (the fine-tune job service), composed
from `conf/` exactly as `python pipelines/run.py <overrides>` would."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from tuneship.settings import project_root
from tuneship.stages import objective, run_stages


def compose_config(overrides: list[str] | None = None):
    """The Hydra config of `conf/` with command-line style overrides."""
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def run_pipeline(overrides: list[str] | None = None) -> dict:
    """Run `stages` (default: preprocess → train → evaluate → register → promote).

    Returns each stage's result under its name, plus `objective` (the headline test metric).
    Raises `TuneshipError` for bad config, data or environment.
    """
    cfg = compose_config(overrides)
    results = run_stages(cfg, tuple(cfg.stages))
    return {**results, "objective": objective(results)}
