"""Incremental detokenization: token ids in, text pieces out, a step at a time.

Decoding each token on its own breaks text in two ways: a character whose UTF-8 bytes span
several tokens (Chinese, emoji) decodes to U+FFFD pieces, and tokenizers that drop a leading
space at the start of a decode (SentencePiece) glue words together. So each new token is
decoded together with a few tokens before it, and only the text that the window adds is
released; while the window ends in an incomplete character, nothing is released.

    # ids: | ... | prefix window | unreleased tokens |
    #            ^ prefix_offset ^ read_offset      ^ len(ids)
    # new text = decode(ids[prefix_offset:]) minus decode(ids[prefix_offset:read_offset])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"
# How many prompt tokens seed the window, so the first generated token is decoded in context.
PROMPT_CONTEXT_TOKENS = 5


class Decoder(Protocol):
    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Detokenizes one sequence's generated tokens. `push` returns the new text; `token_ends`
    records, for each generated token, the length of the text once it was decoded (a token
    that completes a character owns it; one that only starts it owns nothing)."""

    def __init__(self, decoder: Decoder, *, prompt_token_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> None:
        self._decoder = decoder
        self._skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._text_parts: list[str] = []
        self._text_len = 0
        self.token_ends: list[int] = []

    @property
    def text(self) -> str:
        return "".join(self._text_parts)

    @property
    def text_len(self) -> int:
        return self._text_len

    def push(self, token_ids: Iterable[int]) -> str:
        """Add generated tokens; return the text they complete (possibly empty)."""
        pieces = []
        for token_id in token_ids:
            self._ids.append(token_id)
            piece = self._next_piece(final=False)
            if piece:
                pieces.append(piece)
                self._text_len += len(piece)
            self.token_ends.append(self._text_len)
        return self._record("".join(pieces))

    def flush(self) -> str:
        """The sequence is over: release whatever is still held, incomplete characters too."""
        piece = self._next_piece(final=True)
        self._text_len += len(piece)
        if piece and self.token_ends:
            self.token_ends[-1] = self._text_len
        return self._record(piece)

    def _record(self, piece: str) -> str:
        if piece:
            self._text_parts.append(piece)
        return piece

    def _next_piece(self, *, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset:])
        if len(full_text) <= len(prefix_text) and not final:
            return ""  # special tokens skipped, or bytes that complete nothing yet
        if full_text.endswith(REPLACEMENT_CHAR) and not final:
            return ""  # the window ends inside a multi-byte character: wait for the rest
        piece = full_text[len(prefix_text):]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return piece

    def _decode(self, token_ids: Sequence[int]) -> str:
        if not token_ids:
            return ""
        return self._decoder.decode(token_ids, skip_special_tokens=self._skip_special_tokens)
