"""Import the registry's champion into BentoML and build the serving bento (`bentos/`).

    make bento                                        # default experiment (sst2_minilm)
    make bento experiment=smoke                       # any preset
    python pipelines/bento.py experiment=smoke serve.alias=challenger serve.max_batch_size=32

Needs BENTOML_HOME (the Makefile points it at ./bentoml_home). Prints the model and bento tags.
"""

import json

import hydra
from omegaconf import DictConfig

from tuneship import settings  # noqa: F401  (offline hub, config resolvers)
from tuneship.errors import exit_on_user_error
from tuneship.serving.bento import run


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print(json.dumps(run(cfg), indent=2))


if __name__ == "__main__":
    main()
