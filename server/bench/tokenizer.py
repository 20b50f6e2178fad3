"""The tokenizer the benchmark counts prompt tokens with.

It is found from `--tokenizer PATH`, else from `--model` when that is a local path, else from the
default model's (converted) directory. A path is a Hugging Face tokenizer directory or its
tokenizer.json.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from server.config import DEFAULT_MODEL


class TokenizerNotFoundError(ValueError):
    """No tokenizer could be loaded; the message says which flag to give."""


@dataclass(frozen=True)
class BenchTokenizer:
    """Encode and decode without special tokens, the way a prompt's length is counted."""

    backend: Tokenizer
    source: str

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: list[int]) -> str:
        return self.backend.decode(token_ids, skip_special_tokens=True)

    @property
    def special_ids(self) -> frozenset[int]:
        added = self.backend.get_added_tokens_decoder()
        return frozenset(token_id for token_id, token in added.items() if token.special)

    def ordinary_token_ids(self) -> list[int]:
        """Ids that decode alone to printable text with no replacement characters: random prompts
        drawn from these decode to readable text and re-encode close to their own length."""
        special = self.special_ids
        candidates = [i for i in range(self.backend.get_vocab_size(with_added_tokens=True))
                      if i not in special]
        texts = self.backend.decode_batch([[i] for i in candidates])
        return [i for i, text in zip(candidates, texts)
                if text.strip() and text.isprintable() and "\ufffd" not in text]


def resolve_tokenizer_path(*, tokenizer: str | None, model: str | None) -> Path:
    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        if not path.exists():
            raise TokenizerNotFoundError(f"--tokenizer {tokenizer}: no such file or directory")
        return path
    if model is not None and Path(model).expanduser().exists():
        return Path(model).expanduser()
    if model is not None and model != DEFAULT_MODEL and not model.startswith("dummy:"):
        # Prompt lengths would be counted in another model's tokens; usage figures still hold.
        print(f"inflightd bench: counting prompt tokens with the default model's tokenizer, "
              f"not {model!r}'s; give --tokenizer PATH for exact lengths", file=sys.stderr)
    try:
        from server.engine.loading.weights import default_model_dir
        return Path(default_model_dir())
    except (ImportError, ValueError) as exc:
        raise TokenizerNotFoundError(
            f"cannot find the default model's tokenizer ({exc}); give --tokenizer PATH") from exc


def load_tokenizer(*, tokenizer: str | None = None, model: str | None = None) -> BenchTokenizer:
    path = resolve_tokenizer_path(tokenizer=tokenizer, model=model)
    tokenizer_json = path / "tokenizer.json" if path.is_dir() else path
    try:
        if tokenizer_json.name == "tokenizer.json" and tokenizer_json.is_file():
            return BenchTokenizer(backend=Tokenizer.from_file(str(tokenizer_json)),
                                  source=str(path))
        # No tokenizer.json (e.g. only a sentencepiece model): transformers converts it.
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(str(path)).backend_tokenizer
    except Exception as exc:  # tokenizers raises its own Exception subclass for bad files
        raise TokenizerNotFoundError(f"cannot load a tokenizer from {path}: {exc}; give "
                                     "--tokenizer DIR (a Hugging Face tokenizer)") from exc
    return BenchTokenizer(backend=backend, source=str(path))
