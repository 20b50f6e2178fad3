"""POST /v1/chat/completions: messages (and tools) -> chat template -> engine -> a
chat.completion, or a stream of chat.completion.chunk events. With tools, the output is read
back into tool calls (server/api/tool_calls); with a grammar, it follows it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from server.api.admission import admission_ticket
from server.api.errors import APIError, invalid_param
from server.api.generation import Generation
from server.api.logprobs import chat_logprobs, vllm_prompt_logprobs
from server.api.protocol import ChatCompletionRequest
from server.api.responses import (ChatChoice, ChatCompletionResponse, ChatLogprobs,
                                  UsageInfo)
from server.api.serving import ServingState, collect, tokenize_off_loop
from server.api.sse_chunks import ChunkEvents, chat_choice
from server.api.streaming import SSEResponse, delta_events, first_step, unless_disconnected
from server.api.structured import RequestGrammar, requested_grammar
from server.api.tokenizer import TokenizerError
from server.api.tool_calls.output import ToolCallStreamer, tool_message
from server.api.tool_calls.plan import ToolPlan, plan_tools


def chat_grammar(body: ChatCompletionRequest, plan: ToolPlan) -> RequestGrammar | None:
    """The response format's grammar or the tools', never both."""
    grammar = requested_grammar(body)
    if plan.grammar is None:
        return grammar
    if grammar is not None:
        raise invalid_param(grammar.param, f"tool_choice {plan.mode!r} constrains the output "
                                           f"to tool calls; it cannot follow {grammar.param} "
                                           f"too")
    return plan.grammar


@dataclass(frozen=True)
class ChatGeneration:
    """A chat request started on the engine: its tool plan, grammar and generation."""

    request_id: str
    generation: Generation
    plan: ToolPlan
    grammar: RequestGrammar | None


async def start_chat_generation(state: ServingState, request: Request,
                                body: ChatCompletionRequest, *,
                                id_prefix: str) -> ChatGeneration:
    """Tools planned, grammar checked, messages through the chat template, and the
    generation made (the engine gets it when its steps are iterated). Shared by
    /v1/chat/completions and /v1/responses."""
    plan = plan_tools(body, parser_name=state.config.api.tool_call_parser)
    grammar = chat_grammar(body, plan)
    tokenizer = state.require_tokenizer()
    messages = body.message_dicts()
    num_chars = (sum(len(m["content"] or "") + len(json.dumps(m.get("tool_calls", "")))
                     for m in messages) + len(json.dumps(plan.template_tools or "")))
    state.check_prompt_chars(num_chars, "messages")
    try:
        prompt = await tokenize_off_loop(
            lambda: tokenizer.encode_chat(messages, tools=plan.template_tools),
            num_chars=num_chars)
    except TokenizerError as exc:
        raise APIError(str(exc), param="messages") from exc
    keep_special = plan.parser is not None and plan.parser.needs_special_tokens
    request_id, generation = state.new_generation(
        body, [prompt], id_prefix=id_prefix, ticket=admission_ticket(request.scope),
        grammar=grammar, skip_special_tokens=not keep_special)
    return ChatGeneration(request_id=request_id, generation=generation, plan=plan,
                          grammar=grammar)


async def create_chat_completion(state: ServingState, request: Request,
                                 body: ChatCompletionRequest) -> Response:
    model = state.check_model(body.model)
    tokenizer = state.require_tokenizer()
    started = await start_chat_generation(state, request, body, id_prefix="chatcmpl")
    request_id, generation = started.request_id, started.generation
    plan, grammar = started.plan, started.grammar
    created = int(time.time())
    if body.stream:
        steps = generation.steps()
        if grammar is not None:  # a grammar that fails to compile is a 400, not a stream
            steps = await first_step(request, steps)
        return SSEResponse(_chunks(state, generation, steps, body, plan, request_id=request_id,
                                   model=model, created=created))
    choices = await unless_disconnected(request, collect(generation, body.n))
    out = []
    for i, choice in enumerate(choices):
        message, finish_reason = tool_message(plan, choice.text, choice.finish_reason)
        logprobs = (ChatLogprobs(content=chat_logprobs(tokenizer, choice.logprobs))
                    if body.logprobs else None)
        out.append(ChatChoice(index=i, message=message, logprobs=logprobs,
                              finish_reason=finish_reason))
    prompt_logprobs = choices[0].prompt_logprobs  # every choice has the same prompt
    response = ChatCompletionResponse(
        id=request_id, created=created, model=model, choices=out,
        usage=UsageInfo(**generation.usage().to_dict()),
        prompt_logprobs=None if body.prompt_logprobs is None or prompt_logprobs is None
        else vllm_prompt_logprobs(tokenizer, prompt_logprobs, body.prompt_logprobs))
    return JSONResponse(response.model_dump(mode="json"))


async def _chunks(state: ServingState, generation: Generation, steps, body: ChatCompletionRequest,
                  plan: ToolPlan, *, request_id: str, model: str,
                  created: int) -> AsyncIterator[bytes]:
    """The SSE events: each choice's role first, then a chunk per choice per engine step,
    the usage chunk if asked for, and [DONE]. An error mid-stream is sent as an event."""
    events = ChunkEvents(request_id=request_id, object_name="chat.completion.chunk",
                         created=created, model=model, include_usage=body.include_usage,
                         running_usage=(generation.running_usage if body.continuous_usage
                                        else None))
    streamers = ({index: ToolCallStreamer(plan) for index in range(body.n)}
                 if plan.parser is not None else {})

    for index in range(body.n):
        yield events.event([chat_choice(index, role="assistant", content="")])

    def render(delta) -> bytes:
        logprobs = None
        if body.logprobs:
            logprobs = ChatLogprobs(content=chat_logprobs(state.tokenizer, delta.logprobs)
                                    ).model_dump(mode="json")
        content, tool_calls, finish_reason = delta.text, None, delta.finish_reason
        streamer = streamers.get(delta.index)
        if streamer is not None:
            content, tool_calls = streamer.push(delta.text, final=finish_reason is not None)
            finish_reason = streamer.finish_reason(finish_reason)
            if not (content or tool_calls or finish_reason or delta.logprobs):
                return b""  # text held back: it may still turn out to start a call
        calls = [call.model_dump(mode="json") for call in tool_calls] if tool_calls else None
        return events.event([chat_choice(delta.index, content=content or None,
                                         tool_calls=calls, logprobs=logprobs,
                                         finish_reason=finish_reason)])

    def usage_event() -> bytes:
        return events.usage_event(generation.usage().to_dict())

    async for event in delta_events(steps, render,
                                    usage_event=usage_event if body.include_usage else None):
        yield event
