"""Errors the API answers in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
         415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}


class ApiError(Exception):
    """A request the API refuses: HTTP `status` with a message that says what to change."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def not_found(kind: str, object_id: str, param: str) -> ApiError:
    """The same answer for an id that does not exist and one that belongs to another owner."""
    return ApiError(404, f"No such {kind}: {object_id}", param=param, code="not_found")
