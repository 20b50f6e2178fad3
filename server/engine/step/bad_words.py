"""Token bans (TensorRT-LLM's bad_words and min_tokens): which tokens a row may not sample
this step, worked out from its history on the host and masked to -inf in one scatter.

A banned sequence [a, b, c] bans c whenever the row's context (prompt + output) ends with
[a, b], so the whole sequence can never be completed, across steps or not; a one-token
sequence bans its token outright. While a row has fewer than min_tokens output tokens, its
stop tokens are banned, so it cannot end early.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from server.engine.step.inputs import host_to_device


@dataclass(frozen=True)
class BannedTokens:
    """The (row, token id) pairs masked this step, as device tensors."""

    rows: torch.Tensor  # int64 [N]
    token_ids: torch.Tensor  # int64 [N]


def bans_tokens(params) -> bool:
    """Whether a request's SamplingParams ban anything (so it needs its history)."""
    return bool(params.bad_words) or params.min_tokens > 0


def banned_token_ids(*, bad_words: Sequence[Sequence[int]], prompt_token_ids: Sequence[int],
                     output_token_ids: Sequence[int], min_tokens: int = 0,
                     stop_token_ids: Sequence[int] = ()) -> set[int]:
    """The tokens one request may not sample next."""
    banned: set[int] = set()
    for word in bad_words:
        if _context_ends_with(prompt_token_ids, output_token_ids, word[:-1]):
            banned.add(word[-1])
    if len(output_token_ids) < min_tokens:
        banned.update(stop_token_ids)
    return banned


def build_banned_tokens(states: Sequence, *, vocab_size: int,
                        device: torch.device | str) -> BannedTokens | None:
    """The step's bans for RequestSamplingStates, row by row; None when nothing is banned.
    Ids outside the vocabulary are ignored (they could never be sampled anyway)."""
    rows: list[int] = []
    token_ids: list[int] = []
    for row, state in enumerate(states):
        params = state.sampling_params
        if not bans_tokens(params):
            continue
        banned = banned_token_ids(bad_words=params.bad_words,
                                  prompt_token_ids=state.prompt_token_ids,
                                  output_token_ids=state.output_token_ids,
                                  min_tokens=params.min_tokens,
                                  stop_token_ids=params.stop_token_ids)
        for token_id in sorted(banned):
            if 0 <= token_id < vocab_size:
                rows.append(row)
                token_ids.append(token_id)
    if not rows:
        return None
    device = torch.device(device)
    return BannedTokens(rows=host_to_device(torch.tensor(rows, dtype=torch.int64), device),
                        token_ids=host_to_device(torch.tensor(token_ids, dtype=torch.int64),
                                                 device))


def apply_banned_tokens(logits: torch.Tensor, banned: BannedTokens) -> torch.Tensor:
    """float32 logits [S, V] with the banned entries at -inf; the input is left as it was
    (it may be a CUDA graph's output buffer)."""
    return logits.index_put((banned.rows, banned.token_ids),
                            torch.tensor(float("-inf"), dtype=logits.dtype,
                                         device=logits.device))


def _context_ends_with(prompt: Sequence[int], output: Sequence[int],
                       tail: Sequence[int]) -> bool:
    """Whether prompt + output ends with `tail`, without joining the two lists."""
    size = len(tail)
    if size == 0:
        return True
    if size > len(prompt) + len(output):
        return False
    from_output = min(size, len(output))
    if list(output[len(output) - from_output:]) != list(tail[size - from_output:]):
        return False
    from_prompt = size - from_output
    return from_prompt == 0 or list(prompt[len(prompt) - from_prompt:]) == \
        list(tail[:from_prompt])
