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
SHAREGPT_SHAPE = ('a JSON list of {"conversations": [{"from": "human", "value": "..."}, '
                  '...]} objects')


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
    """First human turns of ShareGPT conversations, shuffled by `seed`. Output lengths come
    from --output-len (the packaged sample has no responses; other files' are not used)."""
    prompts = read_sharegpt_prompts(Path(path))
    return _sample_prompts(prompts=prompts, tokenizer=tokenizer, num_prompts=num_prompts,
                           output_len=output_len, seed=seed, source=str(path))


def read_sharegpt_prompts(path: Path) -> list[str]:
    """The first turn of each conversation that opens with a human turn (after any system
    turns), from a ShareGPT-format file: a JSON list of
    {"conversations": [{"from": "human" | "gpt" | "system", "value": str}, ...]}.
    Raises DatasetError naming the file and, for a malformed entry, its index."""
    if not path.is_file():
        raise DatasetError(f"ShareGPT file {path} does not exist (or is not a file)")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read ShareGPT file {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise DatasetError(f"{path} is not a ShareGPT file: {SHAREGPT_SHAPE}, got a JSON "
                           f"{type(entries).__name__}")
    prompts = []
    for index, entry in enumerate(entries):
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or not all(
                isinstance(t, dict) and isinstance(t.get("from"), str)
                and isinstance(t.get("value"), str) for t in turns):
            raise DatasetError(f"{path}: entry {index} is not a ShareGPT conversation "
                               f"({SHAREGPT_SHAPE})")
        opening = [t for t in turns if t["from"] != "system"][:1]
        if opening and opening[0]["from"] == "human" and opening[0]["value"].strip():
            prompts.append(opening[0]["value"])
    if not prompts:
        raise DatasetError(f"{path} has no conversation that opens with a human turn")
    return prompts


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
                  input_len: LengthRange, output_len: LengthRange, seed: int,
                  dataset_path: Path | None = None) -> list[SampleRequest]:
    """`dataset` is `random`, `sharegpt` (the packaged sample, or the ShareGPT-format file
    dataset_path), or a path to a JSONL file."""
    if num_prompts < 1:
        raise DatasetError(f"--num-prompts must be >= 1, got {num_prompts}")
    if dataset_path is not None and dataset != "sharegpt":
        raise DatasetError("--dataset-path names a ShareGPT-format file: use it with "
                           "--dataset sharegpt (a JSONL file goes in --dataset itself)")
    if dataset == "random":
        return random_requests(tokenizer=tokenizer, num_prompts=num_prompts, input_len=input_len,
                               output_len=output_len, seed=seed)
    if dataset == "sharegpt":
        return sharegpt_requests(tokenizer=tokenizer, num_prompts=num_prompts,
                                 output_len=output_len, seed=seed,
                                 path=SHAREGPT_PATH if dataset_path is None else dataset_path)
    if dataset.endswith(".jsonl") or Path(dataset).is_file():
        return jsonl_requests(path=Path(dataset), tokenizer=tokenizer, num_prompts=num_prompts,
                              output_len=output_len, seed=seed)
    raise DatasetError(f"--dataset must be random, sharegpt or a .jsonl file, got {dataset!r}")
