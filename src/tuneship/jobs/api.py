"""The HTTP side: OpenAI's Files and fine-tuning jobs routes as a Starlette app.

    app = build_app(load_settings())       # routes at /files, /fine_tuning/jobs, ...: mount under /v1
    standalone_app(settings)               # the same under /v1, plus /healthz (pipelines/jobs_api.py)

Any OpenAI client works against it (`OpenAI(base_url=".../v1", api_key=KEY)`): `files.create /
list / retrieve / delete / content`, `fine_tuning.jobs.create / list / retrieve / cancel /
list_events / checkpoints.list`. Every route needs `Authorization: Bearer <key>`; the key's owner
sees only its own files and jobs. Errors are `{"error": {"message", "type", "param", "code"}}`.
The store is called in the thread pool: the event loop never waits on the database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tuneship.errors import TuneshipError
from tuneship.jobs.config import JobsSettings, hash_key
from tuneship.jobs.errors import ApiError, error_body
from tuneship.jobs.service import JobsService
from tuneship.jobs.views import file_view, job_view

log = logging.getLogger("tuneship.jobs.api")
FORM_SLACK = 64 * 1024  # multipart framing and the purpose field, beyond the file's own bytes
Handler = Callable[[JobsService, str, Request], Awaitable[Any]]


def build_app(settings: JobsSettings, service: JobsService | None = None) -> Starlette:
    """The routes (no prefix) over one `JobsService`; refuses to start without API keys."""
    if not settings.keys:
        raise TuneshipError("no API keys configured for the jobs API: add keys to "
                            "conf/jobs/default.yaml (owner + sha256) or set TUNESHIP_JOBS_API_KEY")
    service = service or JobsService(settings)
    app = Starlette(routes=routes(service), exception_handlers={
        ApiError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.jobs = service
    return app


def standalone_app(settings: JobsSettings) -> Starlette:
    """`build_app` under `/v1`, with `/healthz`: the API run alone."""
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/healthz", healthz), Mount("/v1", app=build_app(settings))])


def routes(service: JobsService) -> list[Route]:
    """The routes, to mount or to merge into another app's `/v1`."""
    def r(path: str, handler: Handler, method: str) -> Route:
        return Route(path, _authed(service, handler), methods=[method])

    return [
        r("/files", upload_file, "POST"), r("/files", list_files, "GET"),
        r("/files/{file_id}", get_file, "GET"), r("/files/{file_id}", delete_file, "DELETE"),
        r("/files/{file_id}/content", file_content, "GET"),
        r("/fine_tuning/jobs", create_job, "POST"), r("/fine_tuning/jobs", list_jobs, "GET"),
        r("/fine_tuning/jobs/{job_id}", get_job, "GET"),
        r("/fine_tuning/jobs/{job_id}/cancel", cancel_job, "POST"),
        r("/fine_tuning/jobs/{job_id}/events", list_events, "GET"),
        r("/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints, "GET"),
        r("/fine_tuning/jobs/{job_id}/pause", unsupported, "POST"),
        r("/fine_tuning/jobs/{job_id}/resume", unsupported, "POST"),
    ]


def _authed(service: JobsService, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        owner = await run_in_threadpool(_owner, service, request)
        result = await handler(service, owner, request)
        return result if isinstance(result, Response) else JSONResponse(result)

    return endpoint


def _owner(service: JobsService, request: Request) -> str:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "You didn't provide an API key: send 'Authorization: Bearer <key>'",
                       code="missing_api_key")
    owner = service.store.owner_of(hash_key(key.strip()))
    if owner is None:
        raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
    return owner


# --- query parameters --------------------------------------------------------------------------


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ApiError(400, f"limit must be an integer from 1 to {most}, got {raw!r}", param="limit")
    return int(raw)


def _metadata_filter(request: Request) -> dict[str, str]:
    return {key[len("metadata["):-1]: value for key, value in request.query_params.items()
            if key.startswith("metadata[") and key.endswith("]")}


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})") from None


# --- files -------------------------------------------------------------------------------------


async def upload_file(service: JobsService, owner: str, request: Request) -> Any:
    limit = service.settings.limits.max_file_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_SLACK:
        raise ApiError(400, f"the file is over the limit of {limit:,} bytes (the request has "
                       f"{int(declared):,})", param="file", code="invalid_file")
    async with request.form(max_files=1, max_fields=8) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "file: missing (send multipart/form-data with a 'file' part)",
                           param="file")
        if not isinstance(purpose, str):
            raise ApiError(400, "purpose: missing (use 'fine-tune')", param="purpose")
        data = await upload.read(limit + 1)
        filename = upload.filename or "upload"
    return await run_in_threadpool(service.upload, owner, filename, purpose, data)


async def list_files(service: JobsService, owner: str, request: Request) -> Any:
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order must be 'asc' or 'desc', got {order!r}", param="order")
    return await run_in_threadpool(service.files, owner, request.query_params.get("after"),
                                   _limit(request, 10000, 10000), order,
                                   request.query_params.get("purpose"))


async def get_file(service: JobsService, owner: str, request: Request) -> Any:
    row = await run_in_threadpool(service.file, owner, request.path_params["file_id"])
    return file_view(row)


async def delete_file(service: JobsService, owner: str, request: Request) -> Any:
    return await run_in_threadpool(service.delete_file, owner, request.path_params["file_id"])


async def file_content(service: JobsService, owner: str, request: Request) -> Any:
    data = await run_in_threadpool(service.content, owner, request.path_params["file_id"])
    return Response(data, media_type="application/octet-stream")


# --- jobs --------------------------------------------------------------------------------------


async def create_job(service: JobsService, owner: str, request: Request) -> Any:
    body = await _json(request)
    return await run_in_threadpool(service.create_job, owner, body)


async def list_jobs(service: JobsService, owner: str, request: Request) -> Any:
    return await run_in_threadpool(service.jobs, owner, request.query_params.get("after"),
                                   _limit(request, 20, 100), _metadata_filter(request))


async def get_job(service: JobsService, owner: str, request: Request) -> Any:
    return job_view(await run_in_threadpool(service.job, owner, request.path_params["job_id"]))


async def cancel_job(service: JobsService, owner: str, request: Request) -> Any:
    return await run_in_threadpool(service.cancel, owner, request.path_params["job_id"])


async def list_events(service: JobsService, owner: str, request: Request) -> Any:
    return await run_in_threadpool(service.events, owner, request.path_params["job_id"],
                                   request.query_params.get("after"), _limit(request, 20, 1000))


async def list_checkpoints(service: JobsService, owner: str, request: Request) -> Any:
    return await run_in_threadpool(service.checkpoints, owner, request.path_params["job_id"],
                                   request.query_params.get("after"), _limit(request, 10, 100))


async def unsupported(service: JobsService, owner: str, request: Request) -> Any:
    await run_in_threadpool(service.job, owner, request.path_params["job_id"])
    raise ApiError(400, "pausing and resuming jobs is not supported: cancel and create a new job",
                   code="unsupported")


# --- errors ------------------------------------------------------------------------------------


async def _api_error(_: Request, err: Exception) -> Response:
    assert isinstance(err, ApiError)
    return JSONResponse(err.body(), status_code=err.status)


async def _http_error(_: Request, err: Exception) -> Response:
    assert isinstance(err, HTTPException)
    return JSONResponse(error_body(err.status_code, str(err.detail)), status_code=err.status_code)


async def _server_error(request: Request, err: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=err)
    return JSONResponse(error_body(500, f"internal error ({type(err).__name__})"), status_code=500)
