"""A Hugging Face fast tokenizer rebuilt from a GGUF file's `tokenizer.*` metadata.

Only llama.cpp's "gpt2" tokenizer model (byte-level BPE: a vocabulary plus ranked merges) is
handled, which is what the default model ships. The pre-tokenizer follows the file's
`tokenizer.ggml.pre` name, so that text splits into the same pieces the model was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from server.engine.models.config import UnsupportedModelError

# llama.cpp's token types (llama_token_type in llama.h).
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizers that cut every digit into its own piece before the GPT-2 regex runs.
_DIGIT_SPLIT_PRE_TYPES = frozenset({"smollm", "starcoder", "refact"})
_GPT2_PRE_TYPES = frozenset({"gpt-2", "gpt2", "default"})


def _pre_tokenizer(pre_type: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                          use_regex=True)
    if pre_type in _DIGIT_SPLIT_PRE_TYPES:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        byte_level])
    if pre_type in _GPT2_PRE_TYPES:
        return byte_level
    raise UnsupportedModelError(
        f"GGUF tokenizer pre-tokenizer {pre_type!r} is not supported; inflightd rebuilds "
        f"{', '.join(sorted(_DIGIT_SPLIT_PRE_TYPES | _GPT2_PRE_TYPES))}")


def _post_processor(metadata: dict[str, Any], tokens: list[str]) -> processors.PostProcessor:
    byte_level = processors.ByteLevel(trim_offsets=False)
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    if not metadata.get("tokenizer.ggml.add_bos_token") or bos_id is None:
        return byte_level
    bos = tokens[bos_id]
    prepend_bos = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, bos_id)])
    return processors.Sequence([byte_level, prepend_bos])


def build_tokenizer(metadata: dict[str, Any]) -> Tokenizer:
    """The tokenizer described by the `tokenizer.*` keys of a GGUF file's metadata."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(
            f"GGUF tokenizer model {kind!r} is not supported; inflightd rebuilds 'gpt2' "
            "(byte-level BPE) tokenizers")
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    tokenizer = Tokenizer(models.BPE(
        vocab=vocab, merges=merges, unk_token=None if unk_id is None else tokens[unk_id],
        fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre", "default"))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor(metadata, tokens)

    # Control tokens (<|im_start|> ...) must never be split by BPE and are "special" so that
    # decode(skip_special_tokens=True) drops them; they keep their vocabulary ids.
    token_types = metadata.get("tokenizer.ggml.token_type") or []
    tokenizer.add_special_tokens([
        AddedToken(tokens[i], special=True, normalized=False)
        for i, kind in enumerate(token_types) if kind == _TOKEN_TYPE_CONTROL])
    tokenizer.add_tokens([
        AddedToken(tokens[i], special=False, normalized=False)
        for i, kind in enumerate(token_types) if kind == _TOKEN_TYPE_USER_DEFINED])
    return tokenizer


def _token_or_none(metadata: dict[str, Any], key: str) -> str | None:
    token_id = metadata.get(f"tokenizer.ggml.{key}")
    return None if token_id is None else metadata["tokenizer.ggml.tokens"][token_id]


def tokenizer_config(metadata: dict[str, Any], *, model_max_length: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        # Loads tokenizer.json as written, with no class-specific rebuilding of the pipeline.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _token_or_none(metadata, "bos_token_id"),
        "eos_token": _token_or_none(metadata, "eos_token_id"),
        "unk_token": _token_or_none(metadata, "unknown_token_id"),
        "pad_token": _token_or_none(metadata, "padding_token_id"),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    chat_template = metadata.get("tokenizer.chat_template")
    if chat_template:
        config["chat_template"] = chat_template
    return config


def write_tokenizer_files(metadata: dict[str, Any], out_dir: Path, *,
                          model_max_length: int) -> None:
    """tokenizer.json and tokenizer_config.json, as a Hugging Face model directory has them."""
    build_tokenizer(metadata).save(str(out_dir / "tokenizer.json"))
    config = tokenizer_config(metadata, model_max_length=model_max_length)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
