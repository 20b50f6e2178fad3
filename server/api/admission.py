"""Admission control, decided in the api process without asking the engine.

- Queue limit (`--max-queued-requests`): a generation request is refused with 429 and
  Retry-After when the requests already queued reach the limit. Queued = admitted by the
  api but not yet sent to the engine (parsing, tokenizing) + sent but not yet taken up by
  the scheduler (the EngineClient learns that from each step's message).
- Draining (graceful shutdown): every route but the probes and /metrics answers 503.
- In-flight count: the shutdown waits for it to reach zero.

Both are pure ASGI middleware, so a refusal costs no body parsing and the count covers a
streamed response until its last byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import UNAVAILABLE, error_body
from server.triton.errors import is_kserve_path, kserve_error_body

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
# Triton / KServe v2: /v2/models/{name}[/versions/{v}]/{generate,generate_stream,infer}
KSERVE_GENERATION_SUFFIXES = ("/generate", "/generate_stream", "/infer")
OPEN_WHILE_DRAINING = frozenset({"/health", "/ready", "/metrics", "/v2/health/live",
                                 "/v2/health/ready"})
TICKET_SCOPE_KEY = "inflightd.admission_ticket"
RETRY_AFTER_S = 1
RATE_LIMITED = "rate_limit_error"


class AdmissionTicket:
    """One admitted generation request: pending until its first engine request is sent."""

    def __init__(self, controller: "AdmissionController") -> None:
        self._controller = controller
        self.sent = False
        self.released = False

    def mark_sent(self) -> None:
        if not self.sent and not self.released:
            self.sent = True
            self._controller._num_pending -= 1

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if not self.sent:
            self._controller._num_pending -= 1
        self._controller._end_request()


class AdmissionController:
    def __init__(self, *, max_queued_requests: int | None,
                 waiting_in_engine: Callable[[], int]) -> None:
        self._max_queued = max_queued_requests
        self._waiting_in_engine = waiting_in_engine
        self._num_pending = 0
        self.num_in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def num_pending(self) -> int:
        return self._num_pending

    @property
    def num_queued(self) -> int:
        return self._num_pending + self._waiting_in_engine()

    def queue_is_full(self) -> bool:
        return self._max_queued is not None and self.num_queued >= self._max_queued

    def admit(self) -> AdmissionTicket:
        self._num_pending += 1
        self.num_in_flight += 1
        self._idle.clear()
        return AdmissionTicket(self)

    def _end_request(self) -> None:
        self.num_in_flight -= 1
        if self.num_in_flight == 0:
            self._idle.set()

    def start_draining(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted request is in flight; False if the time ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True


def is_generation_path(path: str) -> bool:
    return path in GENERATION_PATHS or (path.startswith("/v2/models/")
                                        and path.endswith(KSERVE_GENERATION_SUFFIXES))


def admission_ticket(scope: Scope) -> AdmissionTicket | None:
    """The ticket the middleware gave this request (None outside the middleware)."""
    return scope.get(TICKET_SCOPE_KEY)


async def send_error(scope: Scope, receive: Receive, send: Send, *, status_code: int,
                     message: str, type: str, code: str,
                     headers: dict[str, str] | None = None) -> None:
    body = (kserve_error_body(message) if is_kserve_path(scope["path"])
            else error_body(message, type=type, code=code))
    response = JSONResponse(body, status_code=status_code, headers=headers)
    await response(scope, receive, send)


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, *, controller: AdmissionController) -> None:
        self.app = app
        self._controller = controller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        controller = self._controller
        path = scope["path"]
        if controller.draining and path not in OPEN_WHILE_DRAINING:
            await send_error(scope, receive, send, status_code=503, type=UNAVAILABLE,
                             code="shutting_down",
                             message="the server is shutting down; retry on another replica",
                             headers={"Connection": "close"})
            return
        if not is_generation_path(path) or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if controller.queue_is_full():
            await send_error(scope, receive, send, status_code=429, type=RATE_LIMITED,
                             code="rate_limit_exceeded",
                             message=f"too many requests are queued "
                                     f"({controller.num_queued}); retry later",
                             headers={"Retry-After": str(RETRY_AFTER_S)})
            return
        ticket = controller.admit()
        try:
            await self.app({**scope, TICKET_SCOPE_KEY: ticket}, receive, send)
        finally:
            ticket.release()
