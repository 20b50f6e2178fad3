"""Each group's grid chosen by the error it leaves, instead of spanning the group's full
range: a shrunk range rounds the bulk of the weights more finely at the cost of clipping the
few largest, which usually pays at 4 bits.

For each (output row n, group g) and each ratio r of a list (1.0 first, so the full range is
always a candidate), the grid spans [r lo, r hi] ([lo, hi]: the group's range stretched to
hold 0; symmetric grids: r max|w|), every weight is rounded on it (clipped to its ends), and
the ratio with the least error is kept:

    error with the inputs' Gram block G_g = X_g^T X_g / T of the group's columns (AWQ):
        d^T G_g d,   d = Q_r(w_ng) - w_ng      the group's share of the output error
    error without inputs (GPTQ's "mse" grid, Frantar et al.'s reference quantizer):
        sum_k |d_k|^2.4

The groups are independent, so each keeps its own ratio.
"""

from __future__ import annotations

import torch

from server.engine.models.int_grid import MIN_SCALE, range_grid, to_codes

NORM = 2.4  # GPTQ's reference quantizer weighs the errors so (between MSE and max error)


def shrink_ratios(steps: int, max_shrink: float) -> list[float]:
    """1.0, then steps more down to 1 - max_shrink."""
    return [1 - max_shrink * i / steps for i in range(steps + 1)]


def grid_at(groups: torch.Tensor, ratio: float, bits: int, *, symmetric: bool,
            min_zero: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zeros) [...] of the grid spanning `ratio` of each group's range [..., size]."""
    if symmetric:
        top = (1 << bits) - 1
        scales = (ratio * groups.abs().amax(dim=-1) / (top / 2)).clamp(min=MIN_SCALE)
        return scales, torch.full_like(scales, 1 << (bits - 1), dtype=torch.int32)
    low, high = groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)
    return range_grid(ratio * low, ratio * high, bits, min_zero=min_zero)


def rounding_error(groups: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                   gram: torch.Tensor | None) -> torch.Tensor:
    """[N, G]: the error of rounding groups [N, G, size] on the grid (scales, zeros) [N, G],
    weighted by gram [G, size, size] (output error) or, without it, |d|^NORM summed."""
    codes = to_codes(groups, scales[..., None], zeros[..., None], bits)
    delta = (codes - zeros[..., None]).float() * scales[..., None] - groups
    if gram is None:
        return delta.abs().pow(NORM).sum(dim=-1)
    per_group = delta.transpose(0, 1)  # [G, N, size]: one batched matmul per group
    return (torch.bmm(per_group, gram) * per_group).sum(dim=-1).t()


@torch.no_grad()
def search_grid(groups: torch.Tensor, bits: int, ratios: list[float], *, symmetric: bool,
                gram: torch.Tensor | None = None, min_zero: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For groups [N, G, size] (float32): (scales, zeros, ratios) [N, G] of each group's grid
    with the least error among the ratios (see the module's docstring)."""
    groups = groups.float()
    best_error = best_scales = best_zeros = best_ratio = None
    for ratio in ratios:
        scales, zeros = grid_at(groups, ratio, bits, symmetric=symmetric, min_zero=min_zero)
        error = rounding_error(groups, scales, zeros, bits, gram)
        if best_error is None:
            best_error, best_scales, best_zeros = error, scales, zeros
            best_ratio = torch.full_like(error, ratio)
            continue
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scales = torch.where(better, scales, best_scales)
        best_zeros = torch.where(better, zeros, best_zeros)
        best_ratio = torch.where(better, torch.full_like(error, ratio), best_ratio)
    return best_scales, best_zeros, best_ratio


def group_gram(gram: torch.Tensor, group_size: int) -> torch.Tensor:
    """The diagonal blocks [G, size, size] of a Gram matrix [K, K]: each group's own."""
    count = gram.shape[0] // group_size
    blocks = gram.reshape(count, group_size, count, group_size)
    return blocks.diagonal(dim1=0, dim2=2).permute(2, 0, 1).contiguous()
