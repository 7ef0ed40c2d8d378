"""The jobs worker: runs queued fine-tuning jobs, each in its own process, on this machine
(`executor.kind: local`, the default) or as Ray jobs on a Ray cluster (`executor.kind: ray`).

    python pipelines/jobs_worker.py                                  # conf/jobs/default.yaml
    python pipelines/jobs_worker.py executor.concurrency=2           # key=value overrides
    python pipelines/jobs_worker.py --config my-jobs.yaml
    ray start --head --dashboard-host=127.0.0.1                      # then, for a Ray cluster:
    python pipelines/jobs_worker.py executor.kind=ray                # RAY_ADDRESS or executor.ray_address

local: stopping it (or `kill -9`) stops the jobs it runs; started again, it resumes them from
their last checkpoint. ray: it submits and polls; the jobs go on in Ray while it is stopped and
it attaches to them again when started.
"""

import logging

from tuneship.errors import exit_on_user_error
from tuneship.jobs.config import settings_from_cli
from tuneship.jobs.worker import serve


@exit_on_user_error
def main() -> None:
    settings = settings_from_cli(__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(settings)


if __name__ == "__main__":
    main()
