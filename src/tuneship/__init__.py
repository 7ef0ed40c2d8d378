"""Tuneship: the lifecycle of a fine-tuned language model.

    import tuneship
    result = tuneship.run_pipeline(["experiment=smoke"])   # what `make pipeline` runs
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_pipeline"]


def run_pipeline(overrides: list[str] | None = None) -> dict[str, Any]:
    """See `tuneship.pipeline.run_pipeline` (imported on first call: `import tuneship` stays
    light)."""
    from tuneship.pipeline import run_pipeline as run

    return run(overrides)
