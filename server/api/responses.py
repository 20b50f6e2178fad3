"""OpenAI response bodies (pydantic). Fields OpenAI marks required but nullable (a choice's
logprobs, a chunk's finish_reason) are always written, as null when empty."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, model_serializer


def _without_none(data: dict, key: str) -> dict:
    if data.get(key) is None:
        data.pop(key, None)
    return data


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


# ---- chat ----

class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class PromptLogprob(BaseModel):
    """One entry of vLLM's prompt_logprobs: rank 1 is the model's most likely token."""

    logprob: float
    rank: int | None
    decoded_token: str


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None  # left out when there are none

    @model_serializer(mode="wrap")
    def _omit_no_calls(self, handler) -> dict:
        data = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)
        return data


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    # vLLM's extension, where vLLM puts it for chat: written only when asked for
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None

    @model_serializer(mode="wrap")
    def _omit_unasked(self, handler) -> dict:
        return _without_none(handler(self), "prompt_logprobs")


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None}


class ToolCallDeltaOut(BaseModel):
    """A call's first delta carries index, id, type and the name; later ones carry index
    and a fragment of the arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None}


# ---- completions ----

class CompletionLogprobs(BaseModel):
    """With echo, the first prompt token's logprob and top_logprobs are null, as in
    OpenAI's legacy completions."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    # vLLM's extension (request field prompt_logprobs): written only when asked for
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None

    @model_serializer(mode="wrap")
    def _omit_unasked(self, handler) -> dict:
        return _without_none(handler(self), "prompt_logprobs")


class CompletionResponse(BaseModel):
    """Also the shape of each streamed completions chunk, as in OpenAI's API (written by
    sse_chunks.py)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# ---- models, tokenizer ----

class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "inflightd"
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str
