"""Applying a step's grammar bitmask to its logits on the device: tokens the grammar does
not allow get -inf, on the masked rows only (a batch mixes constrained and free requests).

    bitmask int32 [R, W]: bit j of word w allows token 32 * w + j
    logits  float [S, V] with V <= 32 * W (xgrammar pads the last word)
    rows    the R rows of logits that the R bitmask rows belong to, in any order
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from server.engine.inputs import host_to_device


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [R, vocab_size]: the bitmask unpacked, one flag per token."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor,
                        rows: Sequence[int]) -> None:
    """In place: logits[rows[i], t] = -inf wherever bitmask row i does not allow t."""
    if not rows:
        return
    device = logits.device
    allowed = allowed_tokens(host_to_device(bitmask, device), logits.shape[-1])
    if list(rows) == list(range(logits.shape[0])):
        logits.masked_fill_(~allowed, float("-inf"))
        return
    index = host_to_device(torch.tensor(rows, dtype=torch.int64), device)
    masked = logits.index_select(0, index).masked_fill_(~allowed, float("-inf"))
    logits.index_copy_(0, index, masked)
