"""Benchmark workloads: random prompts of an exact token length, ShareGPT prompts, JSONL files.

Every dataset yields `SampleRequest`s: the prompt text, its length in the benchmark tokenizer's
tokens (no special tokens; a server's usage figure adds what its template adds), and the
number of output tokens to ask for.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# vendored with its licence (data/README.md)
SHAREGPT_PATH = Path(__file__).resolve().parent / "data" / "sharegpt_500.json"
_MAX_LENGTH_FIXES = 16


class DatasetError(ValueError):
    """A dataset could not be built or read; the message names the flag or file to fix."""


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def ordinary_token_ids(self) -> list[int]: ...


@dataclass(frozen=True)
class LengthRange:
    """A token length, fixed (`128`) or drawn uniformly from an inclusive range (`128:1024`)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise DatasetError(f"a length range needs 1 <= low <= high, got {self.low}:{self.high}")

    @classmethod
    def parse(cls, text: str) -> LengthRange:
        low, sep, high = text.partition(":")
        try:
            return cls(int(low), int(high) if sep else int(low))
        except ValueError as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"a length is N or LOW:HIGH, got {text!r}") from exc

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}:{self.high}"


@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    prompt_len: int
    output_len: int


def random_prompt(*, tokenizer: Tokenizer, num_tokens: int, rng: random.Random,
                  vocab: list[int]) -> str:
    """Text that re-encodes to exactly `num_tokens` tokens.

    Random ids decode to text whose re-encoding may merge or split tokens; each round keeps the
    re-encoded ids, cut to length or topped up with fresh random ids, until they round-trip.
    """
    token_ids = [rng.choice(vocab) for _ in range(num_tokens)]
    for _ in range(_MAX_LENGTH_FIXES):
        text = tokenizer.decode(token_ids)
        encoded = tokenizer.encode(text)
        if len(encoded) == num_tokens:
            return text
        if len(encoded) > num_tokens:
            token_ids = encoded[:num_tokens]
        else:
            token_ids = encoded + [rng.choice(vocab) for _ in range(num_tokens - len(encoded))]
    raise DatasetError(f"could not build a prompt of exactly {num_tokens} tokens with this "
                       "tokenizer; try another --seed or --input-len")


def random_requests(*, tokenizer: Tokenizer, num_prompts: int, input_len: LengthRange,
                    output_len: LengthRange, seed: int) -> list[SampleRequest]:
    rng = random.Random(seed)
    vocab = tokenizer.ordinary_token_ids()
    if not vocab:
        raise DatasetError("the tokenizer has no ordinary tokens to build random prompts from")
    requests = []
    for _ in range(num_prompts):
        num_tokens = input_len.sample(rng)
        prompt = random_prompt(tokenizer=tokenizer, num_tokens=num_tokens, rng=rng, vocab=vocab)
        requests.append(SampleRequest(prompt, num_tokens, output_len.sample(rng)))
    return requests


def sharegpt_requests(*, tokenizer: Tokenizer, num_prompts: int, output_len: LengthRange,
                      seed: int, path: Path = SHAREGPT_PATH) -> list[SampleRequest]:
    """First human turns of ShareGPT conversations, shuffled by `seed`. The file has no
    responses, so output lengths come from --output-len."""
    try:
        conversations = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read the ShareGPT dataset at {path}: {exc}") from exc
    prompts = [turns[0]["value"] for turns in (c.get("conversations", []) for c in conversations)
               if turns and turns[0].get("from") == "human" and turns[0].get("value", "").strip()]
    return _sample_prompts(prompts=prompts, tokenizer=tokenizer, num_prompts=num_prompts,
                           output_len=output_len, seed=seed, source=str(path))


def jsonl_requests(*, path: Path, tokenizer: Tokenizer, num_prompts: int,
                   output_len: LengthRange, seed: int) -> list[SampleRequest]:
    """One JSON object a line: {"prompt": str} and optionally {"output_len": int}, which
    overrides --output-len for that line."""
    rows: list[tuple[str, int | None]] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc}") from exc
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rows.append(_parse_jsonl_row(line, where=f"{path}:{line_no}"))
    if not rows:
        raise DatasetError(f"dataset {path} has no prompts")
    rng = random.Random(seed)
    order = _cycled_order(len(rows), num_prompts, rng)
    requests = []
    for index in order:
        prompt, fixed_output_len = rows[index]
        out_len = fixed_output_len if fixed_output_len is not None else output_len.sample(rng)
        requests.append(SampleRequest(prompt, len(tokenizer.encode(prompt)), out_len))
    return requests


def _parse_jsonl_row(line: str, *, where: str) -> tuple[str, int | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        raise DatasetError(f'{where}: each line needs {{"prompt": "..."}}')
    out_len = row.get("output_len")
    if out_len is not None and (not isinstance(out_len, int) or out_len < 1):
        raise DatasetError(f"{where}: output_len must be a positive integer, got {out_len!r}")
    return row["prompt"], out_len


def _sample_prompts(*, prompts: list[str], tokenizer: Tokenizer, num_prompts: int,
                    output_len: LengthRange, seed: int, source: str) -> list[SampleRequest]:
    if not prompts:
        raise DatasetError(f"{source} has no prompts")
    rng = random.Random(seed)
    return [SampleRequest(prompts[i], len(tokenizer.encode(prompts[i])), output_len.sample(rng))
            for i in _cycled_order(len(prompts), num_prompts, rng)]


def _cycled_order(num_rows: int, num_wanted: int, rng: random.Random) -> list[int]:
    """A shuffled order of row indices; past the end it starts a fresh shuffle, so every row is
    used once before any is used twice."""
    order: list[int] = []
    while len(order) < num_wanted:
        block = list(range(num_rows))
        rng.shuffle(block)
        order.extend(block[: num_wanted - len(order)])
    return order


def load_requests(*, dataset: str, tokenizer: Tokenizer, num_prompts: int,
                  input_len: LengthRange, output_len: LengthRange,
                  seed: int) -> list[SampleRequest]:
    """`dataset` is `random`, `sharegpt`, or a path to a JSONL file."""
    if num_prompts < 1:
        raise DatasetError(f"--num-prompts must be >= 1, got {num_prompts}")
    if dataset == "random":
        return random_requests(tokenizer=tokenizer, num_prompts=num_prompts, input_len=input_len,
                               output_len=output_len, seed=seed)
    if dataset == "sharegpt":
        return sharegpt_requests(tokenizer=tokenizer, num_prompts=num_prompts,
                                 output_len=output_len, seed=seed)
    if dataset.endswith(".jsonl") or Path(dataset).is_file():
        return jsonl_requests(path=Path(dataset), tokenizer=tokenizer, num_prompts=num_prompts,
                              output_len=output_len, seed=seed)
    raise DatasetError(f"--dataset must be random, sharegpt or a .jsonl file, got {dataset!r}")
