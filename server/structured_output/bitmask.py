"""Applying a step's grammar bitmask to its logits: tokens the grammar does not allow get
-inf, on the masked rows only (a batch mixes constrained and free requests). This is the
torch reference (TorchOps); on a GPU, CudaOps runs csrc/token_bitmask.cu.

    bitmask int32 [R, W]: bit j of word w allows token 32 * w + j; W covers the tokenizer's
            vocabulary, and tokens past 32 * W (an embedding padded beyond it) never pass
    logits  float32 [S, V]
    rows    int64 [R]: the rows of logits the R bitmask rows belong to, in any order
"""

from __future__ import annotations

import torch


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [R, vocab_size]: the bitmask unpacked, one flag per token (False past it)."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1).bool()
    if bits.shape[1] >= vocab_size:
        return bits[:, :vocab_size]
    padding = bits.new_zeros(bits.shape[0], vocab_size - bits.shape[1])
    return torch.cat([bits, padding], dim=1)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor,
                        rows: torch.Tensor) -> None:
    """In place: logits[rows[i], t] = -inf wherever bitmask row i does not allow t."""
    if rows.numel() == 0:
        return
    allowed = allowed_tokens(bitmask, logits.shape[-1])
    masked = logits.index_select(0, rows).masked_fill_(~allowed, float("-inf"))
    logits.index_copy_(0, rows, masked)
