"""Engine TokenLogprobs in OpenAI's two formats: chat (a list of tokens, each with its top
alternatives and bytes) and legacy completions (parallel lists plus text offsets)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from server.api.responses import CompletionLogprobs, TokenLogprob, TopLogprob
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
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []

    def add(self, entries: Sequence[TokenLogprobs], offsets: Sequence[int]) -> None:
        for entry, offset in zip(entries, offsets):
            text, _ = self._tokenizer.token_text_and_bytes(entry.token_id)
            self.tokens.append(text)
            self.token_logprobs.append(finite(entry.logprob))
            top: dict[str, float] = {}
            for token_id, logprob in zip(entry.top_token_ids, entry.top_logprobs):
                top.setdefault(self._tokenizer.token_text_and_bytes(token_id)[0],
                               finite(logprob))
            self.top_logprobs.append(top)
            self.text_offset.append(self._base_offset + offset)

    def build(self) -> CompletionLogprobs:
        return CompletionLogprobs(tokens=self.tokens, token_logprobs=self.token_logprobs,
                                  top_logprobs=self.top_logprobs, text_offset=self.text_offset)

    def take(self) -> CompletionLogprobs:
        """What was added since the last take (for a streamed chunk)."""
        built = self.build()
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return built
