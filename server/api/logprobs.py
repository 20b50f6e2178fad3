"""Engine TokenLogprobs in OpenAI's two formats: chat (a list of tokens, each with its top
alternatives and bytes) and legacy completions (parallel lists plus text offsets); and
prompt logprobs, in legacy completions' echo format (the first prompt token's logprob and
alternatives null: it has no context) and in vLLM's `prompt_logprobs` shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

from server.api.detokenizer import Decoder, IncrementalDetokenizer
from server.api.responses import CompletionLogprobs, PromptLogprob, TokenLogprob, TopLogprob
from server.api.tokenizer import Tokenizer
from server.scheduler.output import TokenLogprobs

# OpenAI's stand-in for a probability too small to write (and JSON has no -inf).
VERY_UNLIKELY = -9999.0


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else VERY_UNLIKELY


def _top(tokenizer: Tokenizer, token_id: int, logprob: float) -> TopLogprob:
    text, raw = tokenizer.token_text_and_bytes(token_id)
    return TopLogprob(token=text, logprob=finite(logprob), bytes=list(raw))


def chat_logprobs(tokenizer: Tokenizer, entries: Sequence[TokenLogprobs]) -> list[TokenLogprob]:
    result = []
    for entry in entries:
        top = _top(tokenizer, entry.token_id, entry.logprob)
        result.append(TokenLogprob(
            token=top.token, logprob=top.logprob, bytes=top.bytes,
            top_logprobs=[_top(tokenizer, t, lp)
                          for t, lp in zip(entry.top_token_ids, entry.top_logprobs)]))
    return result


class CompletionLogprobsBuilder:
    """Accumulates completions-style logprobs; offsets count from the start of the choice's
    text (after the echoed prompt, if any)."""

    def __init__(self, tokenizer: Tokenizer, *, base_offset: int = 0) -> None:
        self._tokenizer = tokenizer
        self._base_offset = base_offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, entries: Sequence[TokenLogprobs], offsets: Sequence[int]) -> None:
        for entry, offset in zip(entries, offsets):
            self._add(entry, self._base_offset + offset, len(entry.top_token_ids))

    def add_prompt(self, token_ids: Sequence[int], entries: Sequence[TokenLogprobs],
                   offsets: Sequence[int], *, num_top: int) -> None:
        """The echoed prompt's tokens (offsets from the start of the text, not moved by
        base_offset): the first with null logprob and alternatives, the others from
        entries (prompt tokens 1.., each with its top num_top alternatives)."""
        if not token_ids:
            return
        self.tokens.append(self._tokenizer.token_text_and_bytes(token_ids[0])[0])
        self.token_logprobs.append(None)
        self.top_logprobs.append(None)
        self.text_offset.append(offsets[0])
        for entry, offset in zip(entries, offsets[1:]):
            self._add(entry, offset, num_top)

    def _add(self, entry: TokenLogprobs, offset: int, num_top: int) -> None:
        self.tokens.append(self._tokenizer.token_text_and_bytes(entry.token_id)[0])
        self.token_logprobs.append(finite(entry.logprob))
        top: dict[str, float] = {}
        for token_id, logprob in zip(entry.top_token_ids[:num_top],
                                     entry.top_logprobs[:num_top]):
            top.setdefault(self._tokenizer.token_text_and_bytes(token_id)[0], finite(logprob))
        self.top_logprobs.append(top)
        self.text_offset.append(offset)

    def build(self) -> CompletionLogprobs:
        return CompletionLogprobs(tokens=self.tokens, token_logprobs=self.token_logprobs,
                                  top_logprobs=self.top_logprobs, text_offset=self.text_offset)

    def take(self) -> CompletionLogprobs:
        """What was added since the last take (for a streamed chunk)."""
        built = self.build()
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return built


def prompt_text_offsets(decoder: Decoder, token_ids: Sequence[int], text_len: int) -> list[int]:
    """Where each prompt token's text starts in the prompt's text (text_len characters
    long), detokenized as generated text is: a token that only starts a character owns
    no text and starts where the next one does. Clamped to the text, should the given
    prompt text and its tokens' decoding differ (a tokenizer that normalises)."""
    detokenizer = IncrementalDetokenizer(decoder)
    detokenizer.push(token_ids)
    detokenizer.flush()
    starts = [0, *detokenizer.token_ends[:-1]]
    return [min(start, text_len) for start in starts]


def vllm_prompt_logprobs(tokenizer: Tokenizer, entries: Sequence[TokenLogprobs],
                         num_top: int) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's shape: None for the first prompt token (no context predicts it), then for
    each token a map from token id to its logprob, rank and text, holding the prompt token
    itself and the top num_top (so num_top or num_top + 1 entries)."""
    result: list[dict[str, PromptLogprob] | None] = [None]
    for entry in entries:
        ranked = {entry.token_id: (entry.logprob, entry.rank)}
        for position, (token_id, logprob) in enumerate(
                zip(entry.top_token_ids[:num_top], entry.top_logprobs[:num_top])):
            ranked.setdefault(token_id, (logprob, position + 1))
        result.append({str(token_id): PromptLogprob(
            logprob=finite(logprob), rank=rank,
            decoded_token=tokenizer.token_text_and_bytes(token_id)[0])
            for token_id, (logprob, rank) in ranked.items()})
    return result
