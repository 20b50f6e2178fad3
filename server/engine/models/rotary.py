"""Rotary position embeddings: inverse frequencies (default, llama3 and linear scaling) and the
cos/sin table the Ops read by position.

The arithmetic follows Hugging Face transformers step by step (inv_freq in float32 from an
int64 arange, positions multiplied in float32, cos/sin taken in float32, then cast to the
model dtype) so that the table is bit-identical to what HF applies.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from server.engine.models.config import UnsupportedModelError


def default_inv_freq(*, head_dim: int, rope_theta: float) -> torch.Tensor:
    """[head_dim // 2] float32: theta ** (-2i / head_dim)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (rope_theta ** exponents)


def llama3_inv_freq(*, head_dim: int, rope_theta: float, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths are slowed by `factor`, short ones kept, and the
    band between the two wavelength cut-offs interpolated smoothly."""
    try:
        factor = float(scaling["factor"])
        low_freq_factor = float(scaling["low_freq_factor"])
        high_freq_factor = float(scaling["high_freq_factor"])
        old_context_len = float(scaling["original_max_position_embeddings"])
    except KeyError as missing:
        raise UnsupportedModelError(
            f"llama3 rope_scaling is missing {missing}; it needs factor, low_freq_factor, "
            "high_freq_factor and original_max_position_embeddings") from None
    inv_freq = default_inv_freq(head_dim=head_dim, rope_theta=rope_theta)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor

    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def longrope_inv_freq(*, head_dim: int, rope_theta: float, factors) -> torch.Tensor:
    """LongRoPE (Phi-3): each frequency slowed by its own factor."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (torch.tensor(factors, dtype=torch.float32) * rope_theta ** exponents)


def longrope_attention_factor(scaling: dict[str, Any], *, max_positions: int) -> float:
    """cos and sin are scaled by sqrt(1 + ln(factor) / ln(original length)), factor being
    how far the context was extended, unless the config names its own."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    original = int(scaling["original_max_position_embeddings"])
    factor = float(scaling.get("factor") or max_positions / original)
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def rope_inv_freq(*, head_dim: int, rope_theta: float,
                  rope_scaling: dict[str, Any] | None) -> torch.Tensor:
    scaling = rope_scaling or {}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return default_inv_freq(head_dim=head_dim, rope_theta=rope_theta)
    if kind == "llama3":
        return llama3_inv_freq(head_dim=head_dim, rope_theta=rope_theta, scaling=scaling)
    if kind == "linear":  # positions divided by factor (Gemma 3's global layers)
        return default_inv_freq(head_dim=head_dim, rope_theta=rope_theta) / float(
            scaling["factor"])
    if kind == "longrope":  # the short factors; build_cos_sin appends the long table
        return longrope_inv_freq(head_dim=head_dim, rope_theta=rope_theta,
                                 factors=scaling["short_factor"])
    raise UnsupportedModelError(f"rope scaling type {kind!r} is not supported "
                                f"(llama3, linear and longrope are)")


def build_cos_sin(*, head_dim: int, rope_theta: float, rope_scaling: dict[str, Any] | None,
                  max_positions: int, dtype: torch.dtype, device: torch.device | str,
                  rotary_dim: int | None = None) -> torch.Tensor:
    """[max_positions, head_dim]: cos of each pair's angle in the first half, sin in the
    second (the layout the Ops docstring names). With rotary_dim (GLM) the frequencies are
    those of a rotary_dim-wide head, and the pairs past them turn by angle 0. LongRoPE
    (Phi-3) stacks two tables, [2 * max_positions, head_dim]: the short factors' rows, then
    the long factors' (a request past the original length reads rows max_positions + p)."""
    inv_freq = rope_inv_freq(head_dim=rotary_dim or head_dim, rope_theta=rope_theta,
                             rope_scaling=rope_scaling)
    table = _cos_sin(inv_freq, head_dim=head_dim, max_positions=max_positions)
    if (rope_scaling or {}).get("rope_type") == "longrope":
        long = _cos_sin(longrope_inv_freq(head_dim=head_dim, rope_theta=rope_theta,
                                          factors=rope_scaling["long_factor"]),
                        head_dim=head_dim, max_positions=max_positions)
        table = torch.cat((table, long)) * longrope_attention_factor(
            rope_scaling, max_positions=max_positions)
    return table.to(dtype=dtype, device=device)


def _cos_sin(inv_freq: torch.Tensor, *, head_dim: int, max_positions: int) -> torch.Tensor:
    """float32 [max_positions, head_dim]: cos | sin of every position's angles."""
    positions = torch.arange(max_positions, dtype=torch.int64).to(torch.float32)
    angles = positions[:, None] * inv_freq[None, :]
    angles = F.pad(angles, (0, head_dim // 2 - angles.shape[1]))
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


def interleaved_pairs_order(*, head_dim: int, rotary_dim: int) -> torch.Tensor:
    """GLM turns dims (2j, 2j + 1) of the first rotary_dim = r by frequency j and leaves
    the rest; the engine turns (i, i + D/2). Holding stored dim order[e] at engine dim e,
    with the same permutation for q and k (their dot products do not change), makes the
    engine's rotation GLM's:

        engine dim | 0 .. r/2-1 | r/2 .. D/2-1     | D/2 .. D/2+r/2-1 | D/2+r/2 .. D-1  |
        stored dim | 0 2 4 ..   | r .. (r+D)/2-1   | 1 3 5 ..         | (r+D)/2 .. D-1  |
                     rotated by frequency 0, 1, ..   not rotated: angle 0 in the table
    """
    passed = torch.arange(rotary_dim, head_dim)
    num_passed_pairs = (head_dim - rotary_dim) // 2
    return torch.cat((torch.arange(0, rotary_dim, 2), passed[:num_passed_pairs],
                      torch.arange(1, rotary_dim, 2), passed[num_passed_pairs:]))


def no_rotation(arch, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The table of a model without rotary (GPT-2): cos 1, sin 0 at every position."""
    half = arch.head_dim // 2
    return torch.cat((torch.ones(arch.max_position_embeddings, half),
                      torch.zeros(arch.max_position_embeddings, half)),
                     dim=-1).to(dtype=dtype, device=device)
