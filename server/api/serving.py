"""What every generation endpoint shares: the served model's state, request checks against
the model (name, vocabulary, context window), and turning prompts into a Generation."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from server.api.admission import AdmissionTicket
from server.api.choice import ChoiceDelta
from server.api.errors import NOT_FOUND, APIError, invalid_param
from server.api.generation import ChoicePlan, Generation
from server.api.metrics import ServerMetrics
from server.api.protocol import SamplingFields
from server.api.request_timing import ChoiceTiming, GenerationRecord, log_generation
from server.api.settings import ServeConfig
from server.api.structured import RequestGrammar
from server.api.tokenizer import Tokenizer
from server.engine.service.client import EngineClient
from server.engine.service.info import EngineInfo
from server.scheduler.output import TokenLogprobs

# Tokenizing text longer than this moves off the event loop, so other streams keep flowing.
LONG_TEXT_CHARS = 16384


async def tokenize_off_loop(encode: Callable[[], list[int]], *, num_chars: int) -> list[int]:
    if num_chars > LONG_TEXT_CHARS:
        return await asyncio.to_thread(encode)
    return encode()


@dataclass
class ServingState:
    """Everything a route needs, made once the engine is up (kept on app.state)."""

    config: ServeConfig
    client: EngineClient
    info: EngineInfo
    tokenizer: Tokenizer | None
    metrics: ServerMetrics | None = None
    started_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_name(self) -> str:
        return self.config.served_model_name

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name the model answers to (--served-model-name, repeatable)."""
        return self.config.served_model_names

    def check_model(self, model: str | None) -> str:
        """The name to answer with: the one asked for, or the first when none was."""
        if model is not None and model not in self.model_names:
            raise APIError(f"the model {model!r} does not exist; this server serves "
                           f"{', '.join(map(repr, self.model_names))}", status_code=404,
                           type=NOT_FOUND, param="model", code="model_not_found")
        return self.model_name if model is None else model

    def require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise APIError("this model has no tokenizer; send prompts as token ids",
                           code="tokenizer_unavailable")
        return self.tokenizer

    def check_prompt_chars(self, num_chars: int, param: str) -> None:
        """Refuse text too long for the context window before tokenizing it: each token
        covers at most `max_token_chars` characters, so longer text needs too many tokens.
        (Tokenizing a 10 MB prompt only to refuse it took 9 s and 1.7 GB here.)"""
        per_token = self.tokenizer.max_token_chars if self.tokenizer is not None else None
        limit = self.info.max_model_len
        if per_token is not None and num_chars > limit * per_token:
            raise APIError(f"this model's maximum context length is {limit} tokens; a text "
                           f"of {num_chars} characters needs more", param=param,
                           code="context_length_exceeded")

    def check_token_ids(self, token_ids: Sequence[int], param: str) -> None:
        vocab_size = self.info.vocab_size
        for token_id in token_ids:
            if not 0 <= token_id < vocab_size:
                raise invalid_param(param, f"token id {token_id} is outside the vocabulary "
                                           f"(0..{vocab_size - 1})")

    def resolve_max_tokens(self, num_prompt_tokens: int, requested: int | None) -> int:
        """Generated tokens to allow: as asked, else up to the end of the context window."""
        limit = self.info.max_model_len
        num_completion = 1 if requested is None else requested  # 0: the prompt alone
        if num_prompt_tokens + num_completion > limit:
            raise APIError(
                f"this model's maximum context length is {limit} tokens; the request needs "
                f"{num_prompt_tokens} prompt tokens + {num_completion} completion tokens",
                param="messages" if requested is None else "max_tokens",
                code="context_length_exceeded")
        capacity = self.info.num_kv_blocks * self.info.block_size
        max_tokens = requested if requested is not None else limit - num_prompt_tokens
        if num_prompt_tokens + max_tokens > capacity:
            if requested is None:
                return capacity - num_prompt_tokens
            raise APIError(f"the request needs {num_prompt_tokens + max_tokens} tokens of KV "
                           f"cache; the whole cache holds {capacity}",
                           param="max_tokens", code="context_length_exceeded")
        return max_tokens

    def new_generation(self, body: SamplingFields, prompts: Sequence[list[int]], *,
                       id_prefix: str, ticket: AdmissionTicket | None = None,
                       grammar: RequestGrammar | None = None,
                       skip_special_tokens: bool = True) -> tuple[str, Generation]:
        """Check the prompts and plan body.num_samples() choices (n, or best_of) for each
        (choice index = prompt * num_samples + j).
        `ticket` (from the admission middleware) learns when the engine has the request;
        every choice's output follows `grammar` when given."""
        if body.stop_token_ids:
            self.check_token_ids(body.stop_token_ids, "stop_token_ids")
        self.check_token_ids([token_id for token_id, _ in body.logit_bias_pairs()],
                             "logit_bias")
        if grammar is not None and body.ignore_eos:
            raise invalid_param("ignore_eos", f"ignore_eos cannot be combined with "
                                              f"{grammar.param}: a finished grammar allows "
                                              f"only the end of the output")
        plans = []
        for prompt_index, prompt in enumerate(prompts):
            max_tokens = self.resolve_max_tokens(len(prompt), body.requested_max_tokens())
            for j in range(body.num_samples()):
                plans.append(ChoicePlan(
                    index=prompt_index * body.num_samples() + j, prompt_index=prompt_index,
                    prompt_token_ids=prompt,
                    sampling_params=body.to_sampling_params(
                        max_tokens=max_tokens, choice_index=j,
                        grammar=None if grammar is None else grammar.spec)))
        request_id = f"{id_prefix}-{uuid.uuid4().hex}"
        stop_ids = () if body.ignore_eos else self.info.eos_token_ids
        generation = Generation(
            client=self.client, decoder=self._decoder(), request_id=request_id, plans=plans,
            stop_strings=body.stop_strings, stop_token_ids=stop_ids,
            want_logprobs=body.num_logprobs() is not None,
            share_prompt_blocks=self.config.cache.enable_prefix_caching,
            block_size=self.info.block_size, priority=body.priority,
            skip_special_tokens=skip_special_tokens,
            grammar_param=None if grammar is None else grammar.param,
            on_sent=None if ticket is None else ticket.mark_sent,
            on_finished=self._generation_finished)
        if grammar is not None and self.metrics is not None:
            self.metrics.observe_constrained_request(grammar.spec.kind)
        return request_id, generation

    def _generation_finished(self, record: GenerationRecord,
                             timings: Sequence[ChoiceTiming]) -> None:
        if self.metrics is not None:
            for timing in timings:
                self.metrics.observe_choice(timing)
            if record.grammar_failed:
                self.metrics.observe_grammar_failure()
        log_generation(record)

    def _decoder(self):
        return self.tokenizer if self.tokenizer is not None else _NoText()


class _NoText:
    """Without a tokenizer (token-id prompts on a dummy model) the text stays empty."""

    def decode(self, token_ids, *, skip_special_tokens: bool = True) -> str:
        return ""


@dataclass
class CollectedChoice:
    text_parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None  # prompt tokens 1..

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


async def collect(generation: Generation, num_choices: int) -> list[CollectedChoice]:
    """Run a generation to the end (for a non-streamed answer)."""
    choices = [CollectedChoice() for _ in range(num_choices)]
    async for deltas in generation.steps():
        for delta in deltas:
            _add(choices[delta.index], delta)
    return choices


def _add(choice: CollectedChoice, delta: ChoiceDelta) -> None:
    if delta.text:
        choice.text_parts.append(delta.text)
    choice.logprobs.extend(delta.logprobs)
    choice.offsets.extend(delta.token_offsets)
    if delta.prompt_logprobs is not None:
        choice.prompt_logprobs = delta.prompt_logprobs
    if delta.finish_reason is not None:
        choice.finish_reason = delta.finish_reason
