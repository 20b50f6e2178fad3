"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Every way a request can go wrong ends here, so bad input is always a 4xx with a message a
user can act on, never a 500: our own APIError, pydantic's validation errors, FastAPI's
RequestValidationError and HTTPException (unknown route, wrong method)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.triton.errors import TritonError, is_kserve_path, kserve_error_body

logger = logging.getLogger("inflightd.api")

INVALID_REQUEST = "invalid_request_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"
UNAVAILABLE = "service_unavailable_error"


class APIError(Exception):
    """An error to answer with; `param` names the offending request field, if one."""

    def __init__(self, message: str, *, status_code: int = 400, type: str = INVALID_REQUEST,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code)


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


def invalid_param(param: str, message: str, *, code: str | None = None) -> APIError:
    return APIError(message, param=param, code=code or "invalid_value")


def error_body(message: str, *, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_validation_errors(errors: Sequence[Any]) -> APIError:
    """The first of pydantic's errors, as an OpenAI 400 naming the field."""
    if not errors:
        return APIError("the request body is invalid")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"
           and not _is_union_tag(part)]
    kind = first.get("type", "")
    if kind in ("json_invalid", "json_type"):
        return APIError(f"the request body is not valid JSON: {first.get('msg', '')}",
                        code="invalid_json")
    if kind == "model_type" and not loc:
        return APIError("the request body must be a JSON object", code="invalid_type")
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    if param:
        message = f"{param}: {message}"
    code = "missing_required_parameter" if kind == "missing" else "invalid_type" \
        if kind.endswith("_type") or kind.endswith("_parsing") else "invalid_value"
    return APIError(message, param=param, code=code)


def _is_union_tag(part: Any) -> bool:
    """pydantic names the union member an error came from ('str', 'list[int]', 'Model');
    a user only needs the field's path."""
    if not isinstance(part, str):
        return False
    return part in _UNION_TAGS or "[" in part or part[:1].isupper()


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        if is_kserve_path(request.url.path):
            return JSONResponse(kserve_error_body(exc.message), status_code=exc.status_code)
        return exc.response()

    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_errors(exc.errors()).response()

    async def on_pydantic_error(_request: Request, exc: ValidationError) -> JSONResponse:
        return from_validation_errors(exc.errors()).response()

    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        kind = NOT_FOUND if status == 404 else INVALID_REQUEST if status < 500 else SERVER_ERROR
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        message = exc.detail if isinstance(exc.detail, str) else phrase
        body = kserve_error_body(message) if is_kserve_path(_request.url.path) \
            else error_body(message, type=kind)
        return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))

    async def on_disconnected(_request: Request, _exc: ClientDisconnected) -> Response:
        # Nobody reads this; 499 is what proxies log for a client that closed early.
        return Response(status_code=499)

    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error while serving a request")
        message = f"internal error: {type(exc).__name__}"
        body = kserve_error_body(message) if is_kserve_path(_request.url.path) \
            else error_body(message, type=SERVER_ERROR)
        return JSONResponse(body, status_code=500)

    async def on_triton_error(_request: Request, exc: TritonError) -> JSONResponse:
        return exc.response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(TritonError, on_triton_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_pydantic_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnected, on_disconnected)
    app.add_exception_handler(Exception, on_unexpected)
