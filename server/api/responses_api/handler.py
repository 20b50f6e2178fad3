"""POST /v1/responses: a ResponsesRequest turned into a chat request (conversation.py), run
by the chat pipeline (chat.start_chat_generation: tools, grammar, template, engine), and its
output returned as a Response object or streamed as events (events.py); GET and DELETE on
stored responses (store.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from server.api.chat import ChatGeneration, start_chat_generation
from server.api.errors import NOT_FOUND, APIError
from server.api.responses_api.conversation import (chat_request, input_messages,
                                                   responses_error)
from server.api.responses_api.events import ResponseEvents
from server.api.responses_api.objects import ResponseContext, ending, output_items
from server.api.responses_api.request import ResponsesRequest
from server.api.responses_api.store import ResponseStore
from server.api.serving import ServingState, collect
from server.api.streaming import SSEResponse, first_step, unless_disconnected
from server.api.tool_calls.output import ToolCallStreamer, tool_message


def not_found(response_id: str, *, param: str | None = None) -> APIError:
    return APIError(f"no stored response has the id {response_id!r} (responses are kept "
                    f"only with store: true, for a limited time)", status_code=404,
                    type=NOT_FOUND, param=param, code="response_not_found")


async def create_response(state: ServingState, store: ResponseStore, request: Request,
                          body: ResponsesRequest) -> Response:
    model = state.check_model(body.model)
    history: tuple[dict[str, Any], ...] = ()
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id)
        if previous is None:
            raise not_found(body.previous_response_id, param="previous_response_id")
        history = previous.messages
    conversation = [*history, *input_messages(body.input)]
    chat = chat_request(body, conversation)
    try:
        started = await start_chat_generation(state, request, chat, id_prefix="resp")
    except APIError as exc:
        raise responses_error(exc) from exc
    context = ResponseContext(response_id=started.request_id.replace("-", "_", 1),
                              created_at=int(time.time()), model=model, body=body)
    if body.stream:
        steps = started.generation.steps()
        if started.grammar is not None:  # a grammar that fails to compile is a 400
            steps = await first_step(request, steps)
        return SSEResponse(_events(started, steps, context, store, conversation))
    choice = (await unless_disconnected(request, collect(started.generation, 1)))[0]
    message, finish_reason = tool_message(started.plan, choice.text, choice.finish_reason)
    status, reason = ending(finish_reason)
    output = output_items(message, status="incomplete" if reason else "completed")
    error = None if status != "failed" else {
        "code": "server_error", "message": "the generation was aborted (the server is "
                                           "shutting down)"}
    response = context.response(status=status, output=output,
                                usage=started.generation.usage(),
                                incomplete_reason=reason, error=error)
    _keep(store, body, response, conversation)
    return JSONResponse(response)


def _keep(store: ResponseStore, body: ResponsesRequest, response: dict[str, Any],
          conversation: list[dict[str, Any]]) -> None:
    """Store a finished response with the conversation a following turn continues."""
    if body.store and response["status"] != "failed":
        store.put(response, conversation + input_messages(response["output"]))


async def _events(started: ChatGeneration, steps, context: ResponseContext,
                  store: ResponseStore, conversation: list[dict[str, Any]]
                  ) -> AsyncIterator[bytes]:
    events = ResponseEvents(context)
    streamer = ToolCallStreamer(started.plan) if started.plan.parser is not None else None
    for event in events.start():
        yield event
    finish_reason = None
    try:
        async for deltas in steps:
            for delta in deltas:
                final = delta.finish_reason is not None
                content, calls = delta.text, []
                if streamer is not None:
                    content, calls = streamer.push(delta.text, final=final)
                out = events.text(content) if content else []
                for call in calls:
                    out += events.call(call)
                for event in out:
                    yield event
                if final:
                    finish_reason = delta.finish_reason
    except APIError as exc:
        for event in events.fail(exc.message):
            yield event
        return
    for event in events.finish(finish_reason, started.generation.usage()):
        yield event
    _keep(store, context.body, events.final, conversation)


async def retrieve_response(store: ResponseStore, response_id: str) -> JSONResponse:
    stored = store.get(response_id)
    if stored is None:
        raise not_found(response_id)
    return JSONResponse(stored.response)


async def delete_response(store: ResponseStore, response_id: str) -> JSONResponse:
    if not store.delete(response_id):
        raise not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
