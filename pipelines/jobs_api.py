"""The Files + fine-tuning jobs API alone (uvicorn), under /v1:

    TUNESHIP_JOBS_API_KEY=sk-local python pipelines/jobs_api.py            # http://127.0.0.1:8100/v1
    python pipelines/jobs_api.py --config my-jobs.yaml port=8200           # key=value overrides

Jobs run in the worker (pipelines/jobs_worker.py), never in this process.
"""


import uvicorn

from tuneship.errors import exit_on_user_error
from tuneship.jobs.api import standalone_app
from tuneship.jobs.config import settings_from_cli


@exit_on_user_error
def main() -> None:
    settings = settings_from_cli(__doc__.splitlines()[0])
    uvicorn.run(standalone_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
