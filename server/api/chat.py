"""POST /v1/chat/completions: messages -> chat template -> engine -> a chat.completion, or a
stream of chat.completion.chunk events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from server.api.admission import admission_ticket
from server.api.errors import APIError
from server.api.generation import Generation
from server.api.logprobs import chat_logprobs
from server.api.protocol import ChatCompletionRequest
from server.api.responses import (ChatChoice, ChatChunkChoice, ChatCompletionChunk,
                                  ChatCompletionResponse, ChatDelta, ChatLogprobs,
                                  ChatMessageOut, UsageInfo)
from server.api.serving import ServingState, collect, tokenize_off_loop
from server.api.streaming import SSEResponse, delta_events, sse_event, unless_disconnected
from server.api.tokenizer import TokenizerError


async def create_chat_completion(state: ServingState, request: Request,
                                 body: ChatCompletionRequest) -> Response:
    model = state.check_model(body.model)
    tokenizer = state.require_tokenizer()
    messages = body.message_dicts()
    state.check_prompt_chars(sum(len(m["content"]) for m in messages), "messages")
    try:
        prompt = await tokenize_off_loop(lambda: tokenizer.encode_chat(messages),
                                         num_chars=sum(len(m["content"]) for m in messages))
    except TokenizerError as exc:
        raise APIError(str(exc), param="messages") from exc
    request_id, generation = state.new_generation(body, [prompt], id_prefix="chatcmpl",
                                                  ticket=admission_ticket(request.scope))
    created = int(time.time())
    if body.stream:
        return SSEResponse(_chunks(state, generation, body, request_id=request_id,
                                   model=model, created=created))
    choices = await unless_disconnected(request, collect(generation, body.n))
    want_logprobs = body.logprobs
    response = ChatCompletionResponse(
        id=request_id, created=created, model=model,
        choices=[ChatChoice(
            index=i, message=ChatMessageOut(content=choice.text),
            logprobs=ChatLogprobs(content=chat_logprobs(tokenizer, choice.logprobs))
            if want_logprobs else None,
            finish_reason=choice.finish_reason) for i, choice in enumerate(choices)],
        usage=UsageInfo(**generation.usage().to_dict()))
    return JSONResponse(response.model_dump(mode="json"))


async def _chunks(state: ServingState, generation: Generation, body: ChatCompletionRequest, *,
                  request_id: str, model: str, created: int) -> AsyncIterator[bytes]:
    """The SSE events: each choice's role first, then a chunk per choice per engine step,
    the usage chunk if asked for, and [DONE]. An error mid-stream is sent as an event."""
    include_usage = body.include_usage

    def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> bytes:
        data = ChatCompletionChunk(id=request_id, created=created, model=model,
                                   choices=choices, usage=usage)
        exclude = None if include_usage else {"usage"}
        return sse_event(data.model_dump_json(exclude=exclude))

    for index in range(body.n):
        yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""),
                                     logprobs=None)])

    def render(delta) -> bytes:
        logprobs = None
        if body.logprobs:
            logprobs = ChatLogprobs(content=chat_logprobs(state.tokenizer, delta.logprobs))
        return chunk([ChatChunkChoice(index=delta.index,
                                      delta=ChatDelta(content=delta.text or None),
                                      logprobs=logprobs, finish_reason=delta.finish_reason)])

    def usage_event() -> bytes:
        return chunk([], usage=UsageInfo(**generation.usage().to_dict()))

    async for event in delta_events(generation.steps(), render,
                                    usage_event=usage_event if include_usage else None):
        yield event
