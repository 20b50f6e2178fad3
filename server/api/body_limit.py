"""The request-body size cap (`--max-request-body-bytes`), enforced while the body is read.

A declared Content-Length over the cap is refused with 413 before a byte of the body is
read. A body without one (chunked) is counted as it arrives, and the read that crosses the
cap raises RequestBodyTooLarge, which the app answers with 413; so a huge body is never
buffered whole.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.admission import send_error
from server.api.errors import INVALID_REQUEST, APIError


class RequestBodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {limit} bytes",
                         status_code=413, code="request_too_large")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed one itself
    return None


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_error(scope, receive, send, status_code=413, type=INVALID_REQUEST,
                             code="request_too_large",
                             message=f"the request body ({declared} bytes) is larger than "
                                     f"the limit of {limit} bytes",
                             headers={"Connection": "close"})
            return
        num_received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal num_received
            message = await receive()
            if message["type"] == "http.request":
                num_received += len(message.get("body", b""))
                if num_received > limit:
                    raise RequestBodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except RequestBodyTooLarge as exc:
            if response_started:  # too late to answer with a status
                raise
            await send_error(scope, receive, send, status_code=exc.status_code,
                             type=exc.type, code=exc.code, message=exc.message)
