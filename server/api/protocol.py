"""OpenAI request bodies (pydantic), validated strictly: a field of the wrong type or out of
range is a 400 naming the field. Each request turns into engine SamplingParams through
`to_sampling_params`; what only the api process handles (stop strings, echo, n) stays here.

Extensions beyond OpenAI, as vLLM users know them: top_k, min_p, repetition_penalty,
stop_token_ids, ignore_eos, priority, prompt_logprobs, and the grammar fields of
protocol_structured.py.
Unknown fields are ignored, as OpenAI's SDKs send fields a server may not know.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from server.api.errors import invalid_param
from server.api.protocol_base import StrictModel
from server.api.protocol_structured import GuidedFields, ToolCallIn, ToolFields
from server.scheduler.request import (MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_ENTRIES, MAX_LOGPROBS,
                                      SamplingParams, SamplingParamsError)
from server.structured_output.spec import GrammarSpec

MAX_CHOICES = 16  # n above this is refused: each choice is a full engine request
MAX_BEST_OF = 20  # OpenAI's own limit
MAX_STOP_STRINGS = 16
# A stream holds back as much text as the longest stop string could still match.
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
# prompts x n of one completions request: each is an engine request, so one small body
# could otherwise queue thousands of them past any admission limit.
MAX_BATCH_CHOICES = 256
# Integers cross to the engine as msgpack int64; a larger one would fail there as a 500.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class StreamOptions(StrictModel):
    include_usage: bool = False
    # vLLM's extension: every chunk carries the running usage, so a client can tell how many
    # tokens a chunk brought (a step whose token completes no character sends no chunk)
    continuous_usage_stats: bool = False


class ContentPart(StrictModel):
    type: str
    text: str | None = None


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool result's call

    def text(self, index: int) -> str:
        """The message's text; text parts are joined, other part types are refused."""
        if self.content is None:
            if self.role == "assistant":
                return ""
            raise invalid_param(f"messages.{index}.content", "content is required")
        if isinstance(self.content, str):
            return self.content
        texts = []
        for i, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise invalid_param(f"messages.{index}.content.{i}",
                                    f"content part type {part.type!r} is not supported; "
                                    "this model takes text parts only")
            texts.append(part.text)
        return "".join(texts)


class SamplingFields(GuidedFields):
    """The fields chat and completions share."""

    model: str | None = None  # None: the one served model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=INT64_MAX)  # -1 or 0: no cut, as in vLLM
    min_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    priority: int = Field(0, ge=INT64_MIN, le=INT64_MAX)
    logit_bias: dict[str, float] | None = None
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _check_shared(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise invalid_param("stream_options", "stream_options is only allowed with stream")
        if self.prompt_logprobs is not None and self.stream:
            raise invalid_param("prompt_logprobs", "prompt_logprobs are not available when "
                                                   "streaming (as in vLLM)")
        stops = self.stop_strings
        if len(stops) > MAX_STOP_STRINGS:
            raise invalid_param("stop", f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        if any(not s for s in stops):
            raise invalid_param("stop", "stop strings must not be empty")
        if any(len(s) > MAX_STOP_STRING_CHARS for s in stops):
            raise invalid_param("stop", f"a stop string may have at most "
                                        f"{MAX_STOP_STRING_CHARS} characters")
        if self.stop_token_ids is not None and len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise invalid_param("stop_token_ids",
                                f"at most {MAX_STOP_TOKEN_IDS} stop token ids are allowed")
        self.logit_bias_pairs()  # its errors are 400s now, before anything is tokenized
        return self

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token_id, bias) pairs; OpenAI's keys are token ids as strings.
        (Ids past the vocabulary are refused later, against the served model's.)"""
        if not self.logit_bias:
            return ()
        if len(self.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise invalid_param("logit_bias", f"logit_bias may have at most "
                                              f"{MAX_LOGIT_BIAS_ENTRIES} entries, got "
                                              f"{len(self.logit_bias)}")
        pairs = {}
        for key, bias in self.logit_bias.items():
            if not key.strip().isdigit():
                raise invalid_param("logit_bias", f"logit_bias keys must be token ids "
                                                  f"(non-negative integers), got {key!r}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise invalid_param("logit_bias", f"logit_bias values must be in "
                                                  f"[-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                                                  f"got {bias:g} for token {key.strip()}")
            token_id = int(key)
            if token_id in pairs:
                raise invalid_param("logit_bias", f"logit_bias names token {token_id} twice")
            pairs[token_id] = float(bias)
        return tuple(sorted(pairs.items()))

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        """Usage on every chunk: continuous_usage_stats, with include_usage (as in vLLM)."""
        return self.include_usage and self.stream_options.continuous_usage_stats

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def num_samples(self) -> int:
        """Engine requests per prompt (n, or completions' best_of)."""
        return self.n

    def num_logprobs(self) -> int | None:
        return None

    def num_prompt_logprobs(self) -> int | None:
        """Top alternatives per prompt token the engine computes; None: no prompt
        logprobs."""
        return self.prompt_logprobs

    def to_sampling_params(self, *, max_tokens: int, choice_index: int = 0,
                           grammar: GrammarSpec | None = None) -> SamplingParams:
        """The engine's parameters for one choice. With a seed, choice i draws from seed + i,
        so n choices differ yet each is reproducible."""
        seed = None if self.seed is None else self.seed + choice_index
        top_k = None if self.top_k in (None, 0, -1) else self.top_k
        given = {"temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p,
                 "presence_penalty": self.presence_penalty,
                 "frequency_penalty": self.frequency_penalty,
                 "repetition_penalty": self.repetition_penalty}
        try:
            return SamplingParams(
                **{k: v for k, v in given.items() if v is not None}, top_k=top_k, seed=seed,
                max_tokens=max_tokens, stop_token_ids=tuple(self.stop_token_ids or ()),
                ignore_eos=self.ignore_eos, logprobs=self.num_logprobs(), grammar=grammar,
                logit_bias=self.logit_bias_pairs(),
                prompt_logprobs=self.num_prompt_logprobs())
        except SamplingParamsError as exc:
            raise invalid_param(exc.param, str(exc)) from exc


class ChatCompletionRequest(SamplingFields, ToolFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _check_chat(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid_param("top_logprobs", "top_logprobs needs logprobs set to true")
        for index, message in enumerate(self.messages):
            if message.role == "tool" and not message.tool_call_id:
                raise invalid_param(f"messages.{index}.tool_call_id",
                                    "a tool message needs tool_call_id")
            if message.tool_calls and message.role != "assistant":
                raise invalid_param(f"messages.{index}.tool_calls",
                                    "only assistant messages carry tool_calls")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def message_dicts(self) -> list[dict[str, Any]]:
        return message_dicts(self.messages)


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template takes them (server/api/tool_calls/template.py adapts
    tool calls and results to the template). "developer" is OpenAI's newer name for the
    system role."""
    dicts: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                                   "content": m.text(i)}
        if m.tool_calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [call.model_dump() for call in m.tool_calls]
        if m.tool_call_id is not None and m.role == "tool":
            message["tool_call_id"] = m.tool_call_id
        dicts.append(message)
    return dicts


PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    # 0 only with echo or prompt_logprobs: the prompt scored, nothing generated
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    # with echo, the prompt tokens' logprobs come first (the first one null)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_BEST_OF)

    @model_validator(mode="after")
    def _check_completion(self) -> "CompletionRequest":
        if self.best_of is not None and self.best_of < self.n:
            raise invalid_param("best_of", f"best_of ({self.best_of}) must be at least n "
                                           f"({self.n})")
        if self.ranks_samples and self.stream:
            raise invalid_param("best_of", "best_of greater than n cannot be streamed: the "
                                           "best samples are known only once all have ended")
        if self.max_tokens == 0 and not (self.echo or self.prompt_logprobs is not None):
            raise invalid_param("max_tokens", "max_tokens 0 generates nothing: it needs echo "
                                              "or prompt_logprobs")
        if self.echoes_logprobs and self.suffix:
            raise invalid_param("suffix", "echo with logprobs cannot be combined with "
                                          "suffix: the model's prompt is not the echoed text")
        if not self.prompt or any(len(p) == 0 for p in self.prompt if isinstance(p, str | list)):
            raise invalid_param("prompt", "prompt must not be empty")
        batched = isinstance(self.prompt, list) and isinstance(self.prompt[0], str | list)
        if (len(self.prompt) if batched else 1) * self.num_samples() > MAX_BATCH_CHOICES:
            raise invalid_param("prompt", f"prompts x best_of (or n) must be at most "
                                          f"{MAX_BATCH_CHOICES} in one request")
        return self

    @property
    def echoes_logprobs(self) -> bool:
        """echo with logprobs: the prompt tokens' logprobs lead the choice's logprobs."""
        return self.echo and self.logprobs is not None

    @property
    def ranks_samples(self) -> bool:
        """best_of > n: more samples are drawn than returned, the best by logprob."""
        return self.best_of is not None and self.best_of > self.n

    def requested_max_tokens(self) -> int | None:
        return 16 if self.max_tokens is None else self.max_tokens  # OpenAI's default here

    def num_samples(self) -> int:
        return self.best_of or self.n

    def num_logprobs(self) -> int | None:
        if self.logprobs is None and self.ranks_samples:
            return 0  # the sampled tokens' own logprobs rank the samples
        return self.logprobs

    def num_prompt_logprobs(self) -> int | None:
        """The most alternatives either way of asking wants (each is cut to its own)."""
        wanted = [k for k in (self.prompt_logprobs,
                              self.logprobs if self.echo else None) if k is not None]
        return max(wanted, default=None)


class TokenizeRequest(StrictModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise invalid_param("prompt", "give either prompt or messages")
        return self


class DetokenizeRequest(StrictModel):
    model: str | None = None
    tokens: list[int]
