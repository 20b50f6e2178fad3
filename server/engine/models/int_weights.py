"""Integer weights for the linear layers as the engine holds them: W8A16, W4A16 and W8A8.

One weight [N, K] (N outputs, K inputs) is split along K into groups of `group_size`
columns; each row has one scale per group (group_size == K: one per row, "per channel").

    bits 8  qweight int8  [N, K]        value = q * scale                (symmetric)
    bits 4  qweight uint8 [N, K // 2]   value = (q - zero) * scale       (q in 0..15)
            byte j of a row holds columns 2j (low nibble) and 2j + 1 (high nibble):
            | k=1 | k=0 | k=3 | k=2 | ...      (high nibble | low nibble), per byte
    scales  [N, K // group_size]  in the activation dtype
    zeros   [N, K // group_size]  same dtype as scales (4 bits only; 8 for symmetric)

act_int8 marks W8A8 (SmoothQuant): each token's activations are quantized to int8 at run
time with one scale per token; the smoothing factors are already folded into the weight
and the preceding norm, so nothing else changes at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_PACK = 2  # 4-bit values per byte


@dataclass(frozen=True)
class IntWeight:
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bits: int
    group_size: int
    act_int8: bool = False

    def __post_init__(self) -> None:
        rows, groups = self.scales.shape
        if self.bits == 8:
            expected = (torch.int8, (rows, groups * self.group_size))
        elif self.bits == 4:
            expected = (torch.uint8, (rows, groups * self.group_size // INT4_PACK))
        else:
            raise ValueError(f"IntWeight holds 8 or 4 bits, not {self.bits}")
        if (self.qweight.dtype, tuple(self.qweight.shape)) != expected:
            raise ValueError(f"a {self.bits}-bit IntWeight with scales {tuple(self.scales.shape)} "
                             f"and group size {self.group_size} needs qweight {expected}, got "
                             f"{(self.qweight.dtype, tuple(self.qweight.shape))}")
        if (self.bits == 4) != (self.zeros is not None):
            raise ValueError("4-bit weights carry zero points; 8-bit weights are symmetric")
        if self.act_int8 and self.bits != 8:
            raise ValueError("W8A8 (act_int8) needs 8-bit weights")

    @property
    def shape(self) -> tuple[int, int]:
        return self.scales.shape[0], self.scales.shape[1] * self.group_size

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The [N, K] weight in `dtype` (default: the scales' dtype), as the reference path uses it."""
        dtype = dtype or self.scales.dtype
        values = (unpack_int4(self.qweight) if self.bits == 4 else self.qweight).float()
        if self.zeros is not None:
            values = values - self.zeros.float().repeat_interleave(self.group_size, dim=1)
        return (values * self.scales.float().repeat_interleave(self.group_size, dim=1)).to(dtype)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """[N, K] integers in 0..15 -> [N, K // 2] uint8, even columns in the low nibble."""
    if values.shape[-1] % INT4_PACK:
        raise ValueError(f"4-bit packing needs an even number of columns, got {values.shape[-1]}")
    q = values.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[N, K // 2] uint8 -> [N, K] uint8 in 0..15 (the inverse of pack_int4)."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)
