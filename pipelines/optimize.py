"""Build the task's optimized runtimes of a registered version and judge each against its fp32
model on the test split (parity gate); passed ones are logged to the version.

    python pipelines/optimize.py                               # this pipeline's version, else @champion
    python pipelines/optimize.py optimize.version=@champion    # or a number; any preset, any override
    python pipelines/optimize.py 'optimize.candidates=[onnx-int8]'
"""

import json

import hydra
from omegaconf import DictConfig

from tuneship.errors import exit_on_user_error
from tuneship.stages import run_stages


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print(json.dumps(run_stages(cfg, ("optimize",))["optimize"], indent=2))


if __name__ == "__main__":
    main()
