"""Integer grids for linear weights: codes, scales and zero points per group of input columns,
round to nearest; shared by quantization on load and by `inflightd quantize`.

A weight [N, K] is cut along K into groups of `group_size` columns (group_size == K: one
group per row, "per channel"). Each (row, group) has a scale s and an integer zero point z,
and each value is stored as a code c in 0 .. 2^bits - 1:

    value = (c - z) * s
    symmetric:  z = 2^(bits - 1),  s = max|w| / (2^(bits - 1) - 1/2)   codes - z in -2^(b-1) .. 2^(b-1)-1
    asymmetric: s = (hi - lo) / (2^bits - 1),  z = round(-lo / s), over the group's range
                [lo, hi] stretched to hold 0 (so zeros stay exact zeros)

The symmetric scale maps the largest magnitude to half a step past the last positive code,
so the grid spends its one extra negative level (as GPTQ's symmetric quantizer does) instead
of leaving it unused; the largest value is off by at most half a step either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from server.engine.models.int_weights import IntWeight, pack_int4

MIN_SCALE = 1e-8  # a group of zeros gets this scale, so dividing by it stays finite


@dataclass(frozen=True)
class IntCodes:
    """A weight [N, K] on an integer grid: value = (codes - zeros) * scales, group by group.
    The neutral form between checkpoint layouts (GPTQ, AWQ, compressed-tensors) and the
    engine's IntWeight."""

    codes: torch.Tensor  # [N, K] int32 in 0 .. 2^bits - 1
    scales: torch.Tensor  # [N, G] float
    zeros: torch.Tensor  # [N, G] int32 (may be 2^bits for GPTQ's v1 format, see loading)
    bits: int
    group_size: int
    # [K] each input column's group, where GPTQ's act-order with dynamic groups scattered
    # them (None: column k is in group k // group_size)
    g_idx: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K]."""
        if self.g_idx is not None:
            groups = self.g_idx.long()
            return (self.codes - self.zeros[:, groups]).float() * self.scales.float()[:, groups]
        zeros = self.zeros.repeat_interleave(self.group_size, dim=1)
        scales = self.scales.float().repeat_interleave(self.group_size, dim=1)
        return (self.codes - zeros).float() * scales

    @property
    def is_symmetric(self) -> bool:
        return bool((self.zeros == 1 << (self.bits - 1)).all())

    def to_int_weight(self, dtype: torch.dtype, *, act_int8: bool = False) -> IntWeight:
        """The engine's layout: 8 bits as signed codes (symmetric grids only, which the
        caller checks with is_symmetric), 4 bits packed two a byte with zero points."""
        if self.g_idx is not None:
            raise ValueError("IntWeight holds groups of adjacent columns; reorder the columns "
                             "of scattered (g_idx) groups first (loading/int_repack.py)")
        scales = self.scales.to(dtype)
        if self.bits == 8:
            signed = (self.codes - (1 << 7)).to(torch.int8)
            return IntWeight(qweight=signed, scales=scales, zeros=None, bits=8,
                             group_size=self.group_size, act_int8=act_int8)
        return IntWeight(qweight=pack_int4(self.codes), scales=scales,
                         zeros=self.zeros.to(dtype), bits=4, group_size=self.group_size)


def grid_params(groups: torch.Tensor, bits: int, *, symmetric: bool, min_zero: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zeros) for each row of `groups` [..., group_size] (float32, int32).
    min_zero: the least zero point an asymmetric grid may have (GPTQ's "gptq" layout stores
    zero - 1, so it needs 1)."""
    groups = groups.float()
    top = (1 << bits) - 1
    if symmetric:
        scales = groups.abs().amax(dim=-1) / (top / 2)
        zeros = torch.full_like(scales, 1 << (bits - 1), dtype=torch.int32)
        return scales.clamp(min=MIN_SCALE), zeros
    # the grid always holds 0 exactly, so zeros (padding, pruned weights) stay zeros
    low, high = groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)
    return range_grid(low, high, bits, min_zero=min_zero)


def range_grid(low: torch.Tensor, high: torch.Tensor, bits: int, *, min_zero: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zeros) of the asymmetric grid spanning [low, high] (low <= 0 <= high);
    values outside it are clipped to its ends when rounded."""
    top = (1 << bits) - 1
    scales = ((high - low) / top).clamp(min=MIN_SCALE)
    zeros = torch.round(-low / scales).clamp(min_zero, top).to(torch.int32)
    return scales, zeros


def to_codes(weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
             bits: int) -> torch.Tensor:
    """Codes of `weight` [..., C] on the grid (scales, zeros) [..., 1] (or broadcastable)."""
    top = (1 << bits) - 1
    return torch.clamp(torch.round(weight.float() / scales) + zeros, 0, top).to(torch.int32)


def round_to_nearest(weight: torch.Tensor, *, bits: int, group_size: int,
                     symmetric: bool) -> IntCodes:
    """Each (row, group) of `weight` [N, K] on its own grid, rounded to nearest."""
    rows, cols = weight.shape
    if cols % group_size:
        raise ValueError(f"group size {group_size} does not divide {cols} input columns")
    groups = weight.float().reshape(rows, cols // group_size, group_size)
    scales, zeros = grid_params(groups, bits, symmetric=symmetric)
    codes = to_codes(groups, scales[..., None], zeros[..., None], bits)
    return IntCodes(codes=codes.reshape(rows, cols), scales=scales, zeros=zeros, bits=bits,
                    group_size=group_size)


def choose_group_size(input_sizes: dict[str, int], requested: int | None = None) -> int:
    """The group size for 4-bit weights of layers with these input sizes ({name: K}): the one
    asked for, which must divide every K; else 128, or 64 or 32 where 128 does not divide
    them all (SmolLM2-135M's hidden size is 576 = 4.5 x 128). Raises ValueError naming a
    layer it does not fit."""
    if requested is not None:
        for name, cols in input_sizes.items():
            if requested < 2 or requested % 2 or cols % requested:
                fits = [g for g in (128, 64, 32) if all(k % g == 0 for k in input_sizes.values())]
                raise ValueError(f"group size {requested} does not divide {name}'s {cols} input "
                                 f"columns (or is odd); sizes that fit every layer: "
                                 f"{fits or 'none of 128, 64, 32'}")
        return requested
    for group in (128, 64, 32):
        if all(cols % group == 0 for cols in input_sizes.values()):
            return group
    odd = {name: cols for name, cols in input_sizes.items() if cols % 32}
    raise ValueError(f"no group size of 128, 64 or 32 divides every linear layer's input "
                     f"size ({odd}); give one that does")
