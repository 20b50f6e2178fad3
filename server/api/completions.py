"""POST /v1/completions: prompt(s) -> engine -> a text_completion, or a stream of them.

A prompt is a string, a list of strings, a list of token ids or a list of token-id lists;
each prompt gets n choices, numbered prompt * n + j as OpenAI does. With best_of > n each
prompt gets best_of samples and returns the n with the highest cumulative logprob (usage
counts every sample's tokens, as OpenAI bills them). With `suffix` the prompt and suffix
are wrapped in the model's fill-in-the-middle tokens (server/api/fim.py).

echo with logprobs puts the prompt tokens' logprobs (computed by the engine in prefill)
before the generated ones, the first token's null, as OpenAI's legacy completions did;
max_tokens 0 then scores the prompt alone (lm-eval's loglikelihood requests). vLLM's
prompt_logprobs field gives them in vLLM's shape on each choice."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from server.api.admission import admission_ticket
from server.api.errors import APIError
from server.api.fim import fim_prompts
from server.api.generation import Generation
from server.api.logprobs import (CompletionLogprobsBuilder, prompt_text_offsets,
                                 vllm_prompt_logprobs)
from server.api.protocol import CompletionRequest
from server.api.responses import CompletionChoice, CompletionResponse, UsageInfo
from server.api.serving import CollectedChoice, ServingState, collect, tokenize_off_loop
from server.api.sse_chunks import ChunkEvents, completion_choice
from server.api.streaming import SSEResponse, delta_events, first_step, unless_disconnected
from server.api.structured import requested_grammar
from server.scheduler.output import TokenLogprobs


@dataclass(frozen=True)
class Echo:
    """What echo writes before a prompt's choices: its text, and with logprobs its token
    ids and where each one's text starts."""

    text: str
    token_ids: Sequence[int]
    offsets: Sequence[int] = ()


async def prompt_token_lists(state: ServingState, body: CompletionRequest) -> list[list[int]]:
    prompt = body.prompt
    single = isinstance(prompt, str) or all(isinstance(p, int) for p in prompt)
    prompts = [prompt] if single else prompt
    token_lists = []
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            tokenizer = state.require_tokenizer()
            state.check_prompt_chars(len(item), "prompt" if single else f"prompt.{i}")
            token_lists.append(await tokenize_off_loop(lambda: tokenizer.encode(item),
                                                       num_chars=len(item)))
        else:
            state.check_token_ids(item, "prompt" if single else f"prompt.{i}")
            token_lists.append(list(item))
    if any(not tokens for tokens in token_lists):
        raise APIError("prompt must not be empty", param="prompt", code="invalid_value")
    return token_lists


def _prompt_texts(state: ServingState, body: CompletionRequest,
                  token_lists: list[list[int]]) -> list[str]:
    """What echo writes back: the prompt as given, or its token ids decoded."""
    if isinstance(body.prompt, str):
        return [body.prompt]
    if body.prompt and all(isinstance(p, str) for p in body.prompt):
        return list(body.prompt)
    decoder = state.tokenizer
    return [decoder.decode(tokens) if decoder else "" for tokens in token_lists]


async def _echoes(state: ServingState, body: CompletionRequest,
                  token_lists: list[list[int]]) -> list[Echo] | None:
    if not body.echo:
        return None
    texts = _prompt_texts(state, body, token_lists)
    if not body.echoes_logprobs:
        return [Echo(text, tokens) for text, tokens in zip(texts, token_lists)]
    echoes = []
    for text, tokens in zip(texts, token_lists):
        offsets = await tokenize_off_loop(  # a decode per token: long prompts off the loop
            lambda tokens=tokens, text=text: prompt_text_offsets(state.tokenizer, tokens,
                                                                 len(text)),
            num_chars=len(text))
        echoes.append(Echo(text, tokens, offsets))
    return echoes


def choice_logprobs(state: ServingState, body: CompletionRequest, echo: Echo | None,
                    prompt_logprobs: Sequence[TokenLogprobs] | None
                    ) -> CompletionLogprobsBuilder:
    """A choice's logprobs builder, opened with its echoed prompt's tokens when echo asks
    for them (after the text the echo writes, generated tokens' offsets count on)."""
    builder = CompletionLogprobsBuilder(state.tokenizer,
                                        base_offset=len(echo.text) if echo else 0)
    if echo is not None and body.echoes_logprobs and prompt_logprobs is not None:
        builder.add_prompt(echo.token_ids, prompt_logprobs, echo.offsets,
                           num_top=body.logprobs)
    return builder


def _vllm_prompt_logprobs(state: ServingState, body: CompletionRequest,
                          prompt_logprobs: Sequence[TokenLogprobs] | None) -> list | None:
    if body.prompt_logprobs is None or prompt_logprobs is None:
        return None
    return vllm_prompt_logprobs(state.tokenizer, prompt_logprobs, body.prompt_logprobs)


async def create_completion(state: ServingState, request: Request,
                            body: CompletionRequest) -> Response:
    model = state.check_model(body.model)
    if body.logprobs is not None or body.prompt_logprobs is not None:
        state.require_tokenizer()  # token strings come from it
    grammar = requested_grammar(body)
    token_lists = await prompt_token_lists(state, body)
    echoes = await _echoes(state, body, token_lists)
    if body.suffix:
        tokenizer = state.require_tokenizer()
        token_lists = fim_prompts(token_lists, body.suffix, fim=tokenizer.fim_tokens,
                                  encode=lambda text: tokenizer.encode(
                                      text, add_special_tokens=False),
                                  bos_token_id=tokenizer.bos_token_id)
    request_id, generation = state.new_generation(body, token_lists, id_prefix="cmpl",
                                                  ticket=admission_ticket(request.scope),
                                                  grammar=grammar)
    created = int(time.time())
    if body.stream:
        steps = generation.steps()
        if grammar is not None:  # a grammar that fails to compile is a 400, not a stream
            steps = await first_step(request, steps)
        return SSEResponse(_chunks(state, generation, steps, body, echoes,
                                   request_id=request_id, model=model, created=created))
    choices = await unless_disconnected(
        request, collect(generation, body.num_samples() * len(token_lists)))
    if body.ranks_samples:
        choices = best_samples(choices, num_samples=body.num_samples(), n=body.n)
    out = []
    for index, choice in enumerate(choices):
        echo = echoes[index // body.n] if echoes else None
        logprobs = None
        if body.logprobs is not None:
            builder = choice_logprobs(state, body, echo, choice.prompt_logprobs)
            builder.add(choice.logprobs, choice.offsets)
            logprobs = builder.build()
        out.append(CompletionChoice(
            index=index, text=(echo.text if echo else "") + choice.text, logprobs=logprobs,
            finish_reason=choice.finish_reason,
            prompt_logprobs=_vllm_prompt_logprobs(state, body, choice.prompt_logprobs)))
    response = CompletionResponse(id=request_id, created=created, model=model, choices=out,
                                  usage=UsageInfo(**generation.usage().to_dict()))
    return JSONResponse(response.model_dump(mode="json"))


def best_samples(samples: list[CollectedChoice], *, num_samples: int,
                 n: int) -> list[CollectedChoice]:
    """Of each prompt's num_samples samples (in prompt order), the n with the highest
    cumulative logprob, best first; ties keep the earlier sample."""
    best = []
    for start in range(0, len(samples), num_samples):
        group = samples[start:start + num_samples]
        ranked = sorted(group, key=lambda c: -sum(lp.logprob for lp in c.logprobs))
        best.extend(ranked[:n])
    return best


async def _chunks(state: ServingState, generation: Generation, steps,
                  body: CompletionRequest,
                  echoes: list[Echo] | None, *, request_id: str, model: str,
                  created: int) -> AsyncIterator[bytes]:
    """With echo, the prompt's text comes first: in an event of its own, or with logprobs
    on the choice's first delta, which brings the prompt logprobs."""
    num_choices = body.n * (len(echoes) if echoes else 1)
    events = ChunkEvents(request_id=request_id, object_name="text_completion",
                         created=created, model=model, include_usage=body.include_usage,
                         running_usage=(generation.running_usage if body.continuous_usage
                                        else None))
    builders: dict[int, CompletionLogprobsBuilder] = {}
    if echoes and not body.echoes_logprobs:
        for index in range(num_choices):
            yield events.event([completion_choice(index, echoes[index // body.n].text)])

    def render(delta) -> bytes:
        text, logprobs = delta.text, None
        echo = echoes[delta.index // body.n] if echoes and body.echoes_logprobs else None
        if echo is not None and delta.index not in builders:
            text = echo.text + text
        if body.logprobs is not None:
            builder = builders.get(delta.index)
            if builder is None:
                builder = builders[delta.index] = choice_logprobs(state, body, echo,
                                                                  delta.prompt_logprobs)
            builder.add(delta.logprobs, delta.token_offsets)
            logprobs = builder.take().model_dump(mode="json")
        return events.event([completion_choice(delta.index, text, logprobs=logprobs,
                                               finish_reason=delta.finish_reason)])

    def usage_event() -> bytes:
        return events.usage_event(generation.usage().to_dict())

    async for event in delta_events(steps, render,
                                    usage_event=usage_event if body.include_usage else None):
        yield event
