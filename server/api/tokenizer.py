"""The api process's tokenizer: a Hugging Face tokenizer loaded from a local directory
(offline), its chat template, and the per-token strings and bytes that logprobs report."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

from server.api.fim import FimTokens, find_fim_tokens
from server.api.tool_calls.template import chat_template_inputs, template_supports_tools


class TokenizerError(ValueError):
    """The tokenizer cannot do what was asked (no chat template, unknown role...)."""


@functools.cache
def _byte_level_decoding_table() -> dict[str, int]:
    """GPT-2 style byte-level BPE writes each byte as a printable character: printable
    Latin-1 bytes stand for themselves, the others are moved to code points from 256 on.
    This is the inverse map, character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


class Tokenizer:
    """Wraps a `transformers` tokenizer; every method is safe to call from the event loop for
    prompts of ordinary size (the Rust tokenizer does the work)."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self._hf = hf_tokenizer
        self._backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        self._byte_level = self._backend is not None and "ByteLevel" in type(
            self._backend.decoder).__name__
        self._token_cache: dict[int, tuple[str, bytes]] = {}

    @classmethod
    def load(cls, tokenizer_dir: str) -> "Tokenizer":
        # Never reach for the network: the directory holds everything.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer  # heavy import, only when a daemon starts

        tokenizer = cls(AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True))
        _ = tokenizer.max_token_chars  # scans the vocabulary here, off the event loop
        return tokenizer

    @functools.cached_property
    def max_token_chars(self) -> int | None:
        """The most characters one token can stand for, where the tokenizer bounds it: in a
        byte-level BPE without a normalizer each token is a fixed string of at most this many
        bytes (hence characters). None for other tokenizers."""
        if not self._byte_level or self._backend.normalizer is not None:
            return None
        return max(len(piece) for piece in self._hf.get_vocab())

    @property
    def vocab_size(self) -> int:
        return len(self._hf)

    @functools.cached_property
    def fim_tokens(self) -> FimTokens | None:
        """The fill-in-the-middle tokens (for `suffix`), when the vocabulary has them."""
        return find_fim_tokens(self._hf.get_vocab())

    @property
    def bos_token_id(self) -> int | None:
        return self._hf.bos_token_id

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._hf, "chat_template", None))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        if self._backend is not None and not self._hf.clean_up_tokenization_spaces:
            return self._backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return self._hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    @functools.cached_property
    def supports_tools(self) -> bool:
        """Whether the chat template renders tools, tool calls and tool messages itself;
        otherwise `render_chat` writes them into ordinary messages (see tool_calls.template)."""
        template = getattr(self._hf, "chat_template", None)
        if isinstance(template, dict):  # named templates: transformers takes "tool_use" for tools
            template = template.get("tool_use") or template.get("default")
        return template_supports_tools(template)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *,
                    tools: list[dict] | None = None, add_generation_prompt: bool = True) -> str:
        if not self.has_chat_template:
            raise TokenizerError("this model's tokenizer has no chat template; "
                                 "use /v1/completions with a plain prompt")
        chat, template_tools = chat_template_inputs(
            [dict(m) for m in messages], tools, supports_tools=self.supports_tools)
        # Only a template that knows tools gets them: the fallback has put them in `chat`.
        extra = {"tools": template_tools} if template_tools else {}
        try:
            return self._hf.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)
        except Exception as exc:  # jinja raises its own errors for messages it rejects
            raise TokenizerError(f"the chat template rejected the messages: {exc}") from exc

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *,
                    tools: list[dict] | None = None) -> list[int]:
        # The template already writes the special tokens it wants (BOS included).
        return self.encode(self.render_chat(messages, tools=tools), add_special_tokens=False)

    def token_text_and_bytes(self, token_id: int) -> tuple[str, bytes]:
        """The token's own text, as logprobs report it, and its UTF-8 bytes. A token holding
        part of a character has no text of its own; it is written as `bytes:\\xe4\\xbd`."""
        cached = self._token_cache.get(token_id)
        if cached is None:
            raw = self._token_bytes(token_id)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            cached = (text, raw)
            self._token_cache[token_id] = cached
        return cached

    def _token_bytes(self, token_id: int) -> bytes:
        if self._byte_level and token_id not in self._hf.all_special_ids:
            piece = self._hf.convert_ids_to_tokens(token_id)
            table = _byte_level_decoding_table()
            if piece is not None and all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        piece = self._hf.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") \
                and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
        if isinstance(piece, str) and "\u2581" in piece:
            return piece.replace("\u2581", " ").encode("utf-8")  # SentencePiece's space mark
        return self.decode([token_id], skip_special_tokens=False).encode("utf-8")
