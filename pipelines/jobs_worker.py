"""The local executor: runs queued fine-tuning jobs, each in its own process.

    python pipelines/jobs_worker.py                                  # conf/jobs/default.yaml
    python pipelines/jobs_worker.py executor.concurrency=2           # key=value overrides
    python pipelines/jobs_worker.py --config my-jobs.yaml

Stopping it (or `kill -9`) stops the jobs it runs; started again, it resumes them from their
last checkpoint.
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
