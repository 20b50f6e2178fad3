"""SmoothQuant's migration strength searched per group (smoothquant.py states the method):
the W8A8 rounding simulated on sampled calibration tokens, exactly as the engine and the
checkpoint round (int8 per token for activations, int8 per output channel for weights), and
the alpha whose output error is least kept.

    s(a)    = max|x|^a / max|w|^(1-a)        (per source channel)
    loss(a) = sum over sampled tokens x of || Qa(x / s(a)) Qw(W s(a))^T - x W^T ||^2 / || x W^T ||^2

Each token's error is relative to its own output: outputs of a few tokens (the attention
sink at position 0) are far larger than the rest's, and an absolute sum lets those few
decide the alpha for all (SmolLM2-135M, fake-W8A8 perplexity of ShareGPT prompts 300-399
after calibrating on the first 64: 34.23 absolute, 34.18 relative; float 33.86).

The error is measured on the group's own linear outputs (q, k and v together, gate and up
together), not through attention or the rest of the layer: tokens stay independent, so a
sample of them (every k-th, about SEARCH_TOKENS) stands for all, and a CPU gets through 30
layers in minutes. The maxima use every token.
"""

from __future__ import annotations

import torch

from server.engine.models.int_grid import round_to_nearest
from server.engine.ops.cuda_int import quantize_int8_rows_reference

ALPHA = 0.5  # the paper's default, and what a one-value grid of it reproduces
# None: unsmoothed, so the search never picks worse than leaving the group alone
ALPHA_GRID: tuple[float | None, ...] = (None, *(i / 10 for i in range(11)))
SEARCH_TOKENS = 2048
MIN_SCALE = 1e-5


class TokenSample:
    """Max |x| per channel over every observed token, and every stride-th token kept."""

    def __init__(self, stride: int) -> None:
        self.stride, self.seen = stride, 0
        self.abs_max: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        found = x.abs().amax(dim=0)
        self.abs_max = found if self.abs_max is None else torch.maximum(self.abs_max, found)
        first = (-self.seen) % self.stride  # global token indices 0, stride, 2 stride, ..
        self.rows.append(x[first::self.stride])
        self.seen += x.shape[0]

    def tokens(self) -> torch.Tensor:
        return torch.cat(self.rows)


def per_source(values: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Per-column maxima [columns] -> per source channel (the largest of the columns each
    channel writes); unchanged where index is None (one column per channel)."""
    if index is None:
        return values
    out = torch.zeros(int(index.max()) + 1, dtype=values.dtype)
    return out.scatter_reduce(0, index, values, reduce="amax", include_self=False)


def smoothing_scales(act_max: torch.Tensor, weights: list[torch.Tensor],
                     alpha: float = ALPHA, index: torch.Tensor | None = None) -> torch.Tensor:
    """s [source channels] from the activations' per-column maxima [columns] and the weights
    [out, columns] that read them."""
    weight_max = torch.cat([w.float() for w in weights]).abs().amax(dim=0)
    act_max, weight_max = per_source(act_max, index), per_source(weight_max, index)
    scales = act_max.clamp(min=MIN_SCALE).pow(alpha) / weight_max.clamp(min=MIN_SCALE).pow(
        1 - alpha)
    return scales.clamp(min=MIN_SCALE)


def w8a8_output(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [T, K] @ weight [N, K]^T with both rounded as W8A8 runs them: x to int8 per token
    (the engine's quantize_int8_rows), weight to int8 per output channel (the checkpoint's)."""
    q, scale = quantize_int8_rows_reference(x)
    codes = round_to_nearest(weight, bits=8, group_size=weight.shape[1], symmetric=True)
    return (q.float() * scale) @ codes.dequantize().t()


def w8a8_error(x: torch.Tensor, weight: torch.Tensor, reference: torch.Tensor,
               columns: torch.Tensor | None) -> float:
    """Sum over tokens of || Qa(x / s) Qw(W s)^T - reference ||^2 / || reference ||^2 for
    column scales s (None: s = 1)."""
    if columns is not None:
        x, weight = x / columns, weight * columns[None, :]
    error = (w8a8_output(x, weight) - reference).pow(2).sum(dim=1)
    return float((error / reference.pow(2).sum(dim=1).clamp(min=1e-12)).sum())


@torch.no_grad()
def search_alpha(sample: TokenSample, weights: list[torch.Tensor],
                 index: torch.Tensor | None, alphas) -> tuple[float | None, torch.Tensor | None]:
    """(the alpha of least W8A8 output error on the sampled tokens, its scales [source
    channels]); (None, None) where leaving the group unsmoothed errs least."""
    if len(alphas) == 1 and alphas[0] is not None:  # nothing to search
        return alphas[0], smoothing_scales(sample.abs_max, weights, alphas[0], index)
    x, weight = sample.tokens(), torch.cat(weights)
    reference = x @ weight.t()
    best = (float("inf"), None, None)
    for alpha in alphas:
        scales = None if alpha is None else smoothing_scales(sample.abs_max, weights, alpha,
                                                             index)
        columns = scales if scales is None or index is None else scales[index]
        error = w8a8_error(x, weight, reference, columns)
        if error < best[0]:
            best = (error, alpha, scales)
    return best[1], best[2]
