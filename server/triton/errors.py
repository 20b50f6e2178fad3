"""Errors of the Triton / KServe v2 front door: {"error": "..."} over HTTP (the gRPC
server maps the same errors to status codes)."""

from __future__ import annotations

from starlette.responses import JSONResponse


class TritonError(Exception):
    """A request the front door refuses or could not serve, with its HTTP status."""

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def response(self) -> JSONResponse:
        return JSONResponse(kserve_error_body(self.message), status_code=self.status_code)


def kserve_error_body(message: str) -> dict[str, str]:
    return {"error": message}


def is_kserve_path(path: str) -> bool:
    """Routes that answer errors in KServe v2's shape rather than OpenAI's."""
    return path == "/v2" or path.startswith("/v2/")
