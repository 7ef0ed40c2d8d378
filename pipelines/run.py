"""The whole lifecycle: preprocess → train → evaluate → register → promote, in one process.

    python pipelines/run.py                                  # default: sst2_minilm
    python pipelines/run.py experiment=ag_news_minilm train.epochs=2
    python pipelines/run.py -m train.lr=3e-5,5e-5            # a Hydra sweep (one run per value)

Returns the headline test metric, so Hydra sweepers can optimise it.
"""

import json

import hydra
from omegaconf import DictConfig

from tuneship.errors import exit_on_user_error
from tuneship.stages import objective, run_stages


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    results = run_stages(cfg, tuple(cfg.stages))
    summary = {name: results[name] for name in ("register", "promote") if name in results}
    if "evaluate" in results:
        summary["evaluate"] = results["evaluate"]["metrics"]
    print(json.dumps(summary, indent=2))
    return objective(results)


if __name__ == "__main__":
    main()
