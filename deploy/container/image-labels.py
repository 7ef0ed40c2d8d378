#!/usr/bin/env python3
"""Print `--opt label=KEY=VALUE` lines for `bentoml containerize <bento>` (one argument a line).

The labels name the model the bento serves: the registered model, its version, alias and MLflow
run id (read from the BentoML model's labels, which `make bento` writes), plus the bento tag.
Also reports on stderr which base image and torch build the bento's image will use.

    deploy/container/image-labels.py tuneship-smoke:latest
"""

from __future__ import annotations

import sys

import bentoml


def main(bento_tag: str) -> int:
    bento = bentoml.get(bento_tag)
    model_tag = bento.info.labels.get("model") or str(bento.info.all_models[0].tag)
    model = bentoml.models.get(model_tag)
    m = model.info.labels
    kind = {"text-generation": "text generator"}.get(bento.info.labels.get("task", ""),
                                                     "text classifier")
    labels = {
        "org.opencontainers.image.title": bento.tag.name,
        "org.opencontainers.image.version": bento.tag.version,
        "org.opencontainers.image.description": f"Tuneship {kind} serving {model_tag}",
        "ai.tuneship.bento": str(bento.tag),
        "ai.tuneship.bento_model": model_tag,
        "ai.tuneship.model.name": m.get("registered_model", model.tag.name),
        "ai.tuneship.model.version": m.get("registered_version", ""),
        "ai.tuneship.model.alias": m.get("alias", ""),
        "ai.tuneship.model.run_id": m.get("run_id", ""),
        "ai.tuneship.model.experiment": m.get("experiment", ""),
        "ai.tuneship.task": bento.info.labels.get("task", ""),
    }
    docker = bento.info.docker
    python = bento.info.python
    base = docker.base_image or f"BentoML default (python:{docker.python_version}-slim)"
    if docker.cuda_version:
        torch = f"CUDA torch from PyPI (cuda {docker.cuda_version})"
    elif any("torch" in w for w in (python.wheels or [])):
        torch = "bundled CPU wheel (" + ", ".join(w for w in python.wheels if "torch" in w) + ")"
    else:
        torch = "CPU torch from " + ", ".join(python.extra_index_url or ["PyPI (CUDA build!)"])
    print(f"image: base {base}; torch: {torch}", file=sys.stderr)
    for key, value in labels.items():
        if value:
            print(f"--opt=label={key}={value}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
