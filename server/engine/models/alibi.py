"""ALiBi: the per-head slopes of attention's linear position bias (MPT's definition).

Head h of H adds slope_h * (key position - query position) to its scores (0 on the
diagonal, more negative the further back a key lies), with

    slope_h = 2 ** -(bias_max * (h + 1) / P),   P = H rounded up to a power of two

When H is not a power of two, MPT keeps the odd-indexed slopes of the P-head series first,
then the even-indexed ones, and takes the first H.
"""

from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int, *, bias_max: float) -> torch.Tensor:
    """float32 [num_heads]."""
    padded = 2 ** math.ceil(math.log2(num_heads))
    exponents = torch.arange(1, padded + 1, dtype=torch.int64).float() * (bias_max / padded)
    slopes = 1.0 / torch.pow(2, exponents)
    if padded != num_heads:
        slopes = torch.cat((slopes[1::2], slopes[::2]))[:num_heads]
    return slopes
