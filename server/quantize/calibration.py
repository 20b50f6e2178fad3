"""Calibration text: a JSONL file's texts, or the packaged ShareGPT sample's first 400
prompts, each tokenized as a sequence of its own (its first 512 tokens).

A JSONL line is a JSON string, or an object with "text" (or "prompt", as `inflightd bench`
JSONL files have it). Each text starts at position 0, as a prompt does when it is served:
the first position draws most of the attention in every layer (an "attention sink"), so
its activations must weigh in the statistics as they do at run time. Joining the texts into
512-token blocks instead (AutoAWQ's way) left one such position per block, and GPTQ then
let the sink's values go to fit the other tokens' (SmolLM2-135M, symmetric GPTQ in column
order: held-out perplexity 52.6 joined, 42.0 per text). No padding, no attention mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from server.bench.datasets import SHAREGPT_PATH, DatasetError, read_sharegpt_prompts
from server.quantize.options import QuantizeError

MAX_TOKENS = 512


def calibration_texts(path: Path | None, num_samples: int) -> list[str]:
    """The first num_samples texts of the JSONL file at `path`, or of the packaged ShareGPT
    sample's prompts (options.py keeps those within its first 400)."""
    if path is None:
        try:
            return read_sharegpt_prompts(SHAREGPT_PATH)[:num_samples]
        except DatasetError as exc:
            raise QuantizeError(str(exc)) from exc
    return read_jsonl_texts(Path(path))[:num_samples]


def read_jsonl_texts(path: Path) -> list[str]:
    """Every non-blank line's text; a line that is not one is an error naming the line."""
    if not path.is_file():
        raise QuantizeError(f"calibration file {path} does not exist (or is not a file)")
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise QuantizeError(f"{path}:{number} is not JSON ({exc})") from exc
        text = entry if isinstance(entry, str) else (
            entry.get("text", entry.get("prompt")) if isinstance(entry, dict) else None)
        if not isinstance(text, str) or not text:
            raise QuantizeError(f"{path}:{number} has no text: a line is a JSON string or an "
                                'object with "text" (or "prompt")')
        texts.append(text)
    if not texts:
        raise QuantizeError(f"calibration file {path} holds no texts")
    return texts


def token_sequences(texts: list[str], tokenizer_dir: Path | None, *,
                    max_tokens: int = MAX_TOKENS) -> list[torch.Tensor]:
    """Each text's first max_tokens token ids, [1, tokens] int64 (empty ones left out)."""
    from tokenizers import Tokenizer

    tokenizer_file = tokenizer_dir / "tokenizer.json" if tokenizer_dir else None
    if tokenizer_file is None or not tokenizer_file.is_file():
        raise QuantizeError("calibration needs the model's tokenizer.json beside its weights")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    sequences = [torch.tensor([encoding.ids[:max_tokens]], dtype=torch.int64)
                 for encoding in tokenizer.encode_batch(texts) if encoding.ids]
    if not sequences:
        raise QuantizeError("the calibration texts tokenize to nothing")
    return sequences
