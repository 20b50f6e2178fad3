"""Server-sent events, and noticing a client that went away.

A stream is `data: <json>\\n\\n` events ending with `data: [DONE]\\n\\n`. The response listens
for the client's disconnect while it streams: when the client leaves, the body generator is
cancelled at once (whether it was sending or waiting for the engine), and its `finally`
aborts the engine requests. The same watch guards non-streamed answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from server.api.errors import APIError, ClientDisconnected

T = TypeVar("T")
D = TypeVar("D")

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(data: str | bytes) -> bytes:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return b"data: " + payload + b"\n\n"


async def delta_events(steps: AsyncIterator[list[D]], render: Callable[[D], bytes], *,
                       usage_event: Callable[[], bytes] | None) -> AsyncIterator[bytes]:
    """The body of a stream after its opening events: one event per delta of each engine
    step, then the usage event (when asked for) and [DONE]. An error mid-stream is sent as
    an event in OpenAI's error shape, then [DONE]."""
    try:
        async for deltas in steps:
            for delta in deltas:
                event = render(delta)
                if event:
                    yield event
    except APIError as exc:
        yield sse_event(JSONResponse(exc.body()).body)
        yield SSE_DONE
        return
    if usage_event is not None:
        yield usage_event()
    yield SSE_DONE


async def first_step(request: Request, steps: AsyncIterator[D]) -> AsyncIterator[D]:
    """Wait for a stream's first engine step before the response starts, so that a request
    the engine refuses (a grammar that does not compile) still gets its 4xx. Returns the
    steps again, the first included."""
    try:
        first = await unless_disconnected(request, anext(steps, None))
    except BaseException:
        await steps.aclose()  # aborts the engine requests
        raise

    async def replay() -> AsyncIterator[D]:
        try:
            if first is not None:
                yield first
            async for item in steps:
                yield item
        finally:
            await steps.aclose()

    return replay()


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SSEResponse(StreamingResponse):
    """Streams an async iterator of ready-framed SSE bytes; stops it if the client leaves."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, status_code=200, headers=SSE_HEADERS,
                         media_type="text/event-stream")
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def watch() -> None:
                    await _wait_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    await self._stream(send)
                except OSError:
                    pass  # the connection broke while sending: the same as a disconnect
                group.cancel_scope.cancel()
        finally:
            await self._events.aclose()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for event in self._events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (ClientDisconnected)."""
    result: list[T] = []
    failure: list[BaseException] = []

    async with anyio.create_task_group() as group:
        async def run() -> None:
            try:
                result.append(await work)
            except Exception as exc:  # re-raised below as itself, not in an ExceptionGroup
                failure.append(exc)
            group.cancel_scope.cancel()

        async def watch() -> None:
            await _wait_for_disconnect(request.receive)
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    if failure:
        raise failure[0]
    if not result:
        raise ClientDisconnected()
    return result[0]
