"""What HTTP's middleware does for the gRPC port: API keys (metadata `authorization: Bearer
<key>`), admission (queue limit, draining) with the same controller, and TritonErrors as
gRPC status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from server.api.admission import AdmissionController, AdmissionTicket
from server.api.auth import ApiKeys
from server.triton.errors import TritonError

# HTTP status -> the gRPC status the same failure gets
GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
              413: grpc.StatusCode.RESOURCE_EXHAUSTED,
              429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
              503: grpc.StatusCode.UNAVAILABLE}


def grpc_code(status_code: int) -> grpc.StatusCode:
    return GRPC_CODES.get(status_code, grpc.StatusCode.INTERNAL)


class GrpcGuard:
    def __init__(self, *, admission: AdmissionController, keys: ApiKeys | None) -> None:
        self._admission = admission
        self._keys = keys

    @property
    def draining(self) -> bool:
        return self._admission.draining

    async def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """Liveness and readiness stay open, as the HTTP probes do; the rest need a key
        when keys are set."""
        if self._keys is None:
            return
        token = _bearer(context.invocation_metadata() or ())
        if token is None or not self._keys.accepts(token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing API key: send it as metadata 'authorization: Bearer "
                                "<key>'" if token is None else "invalid API key")

    @asynccontextmanager
    async def admission(self) -> AsyncIterator[AdmissionTicket]:
        """A ticket for one generation, released at the end; TritonError when refused."""
        controller = self._admission
        if controller.draining:
            raise TritonError("the server is shutting down; retry on another replica",
                              status_code=503)
        if controller.queue_is_full():
            raise TritonError(f"too many requests are queued ({controller.num_queued}); "
                              f"retry later", status_code=429)
        ticket = controller.admit()
        try:
            yield ticket
        finally:
            ticket.release()

    @asynccontextmanager
    async def admitted(self, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[AdmissionTicket]:
        """admission() for a unary call: a refusal ends the call with its status."""
        async with self.errors(context):
            async with self.admission() as ticket:
                yield ticket

    @asynccontextmanager
    async def errors(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        try:
            yield
        except TritonError as exc:
            await context.abort(grpc_code(exc.status_code), exc.message)


def _bearer(metadata) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
