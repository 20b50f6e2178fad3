"""GPTQ (Frantar et al., 2022): each linear weight quantized one input column at a time, the
rounding error of each column spread over the columns not yet quantized, weighted by the
inverse Hessian of the layer's squared output error, H = 2 X^T X over the calibration
tokens' inputs X.

    H += damp * mean(diag H) * I          dampening keeps H invertible (damp = 0.01)
    U = cholesky(H^-1), upper             the rows of U give each step's error weights
    for each column j, in order of decreasing H[j, j] ("act-order"; in blocks of 128,
    updating the rest of the block eagerly and the columns after it once per block):
        q_j = quantize(w_j)  on the grid of j's group
        e_j = (w_j - q_j) / U[j, j]
        w_k -= e_j * U[j, k]   for k after j

Each group's grid is fixed before the columns move ("static groups"), so groups stay runs
of adjacent columns: the checkpoint needs no g_idx permutation and every reader (and the
engine, in integers) takes it as a plain GPTQ layout. The grid is asymmetric (zero points),
and spans not the group's whole range [lo, hi] but the share r of it (r in 1.0, 0.99, ..,
0.2) that leaves the least rounding error sum |Q_r(w) - w|^2.4 over the group (the "mse"
option of GPTQ's reference quantizer; grid_search.py): clipping a group's few largest
weights makes its grid finer for the rest, and GPTQ carries the clipped error on like any
other. SmolLM2-135M, calibrating on 64 prompts, perplexity on 50 other calibration prompts:
27.92 with it, 28.43 without; dampening 0.1 instead of 0.01 gave 28.16.
The rounding error that picks r is each group's share of the layer's output error, d^T H_g
d with d = Q_r(w) - w and H_g the group's diagonal block of H (HESSIAN_GRID, as AWQ's
clipping weighs it), rather than the reference's unweighted sum: a group's grid then fits
the columns whose inputs carry the most energy. Proxy (session 15: calibrating on prompts
0-63, float32 token perplexity of prompts 300-349, 24.77 unquantized): groups of 32 26.25
-> 25.97, groups of 64 27.86 -> 26.63; held-out (docs/benchmarks.md) g32 +6.55 % -> +5.22 %
over bf16, g64 +11.4 % -> +7.2 %.
On SmolLM2-135M (4 bits, groups of 64; perplexity on the ShareGPT sample's 100 held-out
prompts in 512-token windows) this gives 34.8, against 31.0 in float32 and 40.1 (42.7)
for asymmetric (symmetric) round to nearest; symmetric, in column order and calibrated on
texts joined into 512-token blocks it gave 44.5.

Rows are independent given H, so q|k|v (one input, one H) and gate|up quantize together.
Layers run in order, each calibrated on the outputs of the layers before it as quantized,
and so do the four groups within a layer ("true sequential", as GPTQ's reference and
GPTQModel do): q|k|v's H from the layer as it came, o_proj's from the layer with q|k|v
quantized, gate|up's with the attention quantized, down_proj's with gate|up quantized, so
each group's rounding also corrects the error its inputs carry. SmolLM2-135M (groups of 64,
calibrating on 64 prompts, perplexity on 50 other calibration prompts, 26.97 in float32):
30.21 with it, 30.61 with every H from the unquantized layer.

awq_scales (`--awq-scales`, 4 bits): each layer first gets AWQ's scales (awq.py: searched
on the layer as it comes, folded into the norms and v_proj's, up_proj's rows), so the input
channels that carry large activations are scaled up in the weights GPTQ rounds; the
checkpoint stays a plain GPTQ layout, only its norms differ from the source's. Mixed, so
off by default. On the same proxy: groups of 64 29.82 with the scales, 30.21 without (with
AWQ's clipping of the scaled weights too: 31.29, so not that); groups of 32 29.16 with,
28.49 without. Held-out (docs/benchmarks.md, issue 21): g64 +11.36 % -> +9.56 % over bf16,
g32 +6.39 % -> +7.75 %.

Dynamic groups (STATIC_GROUPS = False; GPTQModel's default act-order, "desc_act"): a new
group every group_size columns in act-order, its grid from those columns as GPTQ has
updated them, so a group's columns lie scattered and the codes carry g_idx (a checkpoint of
them would be desc_act true, which the engine runs mostly dequantized). On the same proxy
(2026-12-05): groups of 32 29.15 (static 28.49), groups of 64 29.82 (static 30.21); g32
with each group's whole range as its grid (no mse search): 29.26 (static 28.74). The best,
g32, gets worse, so static groups stay the only layout `inflightd quantize` writes.
"""

from __future__ import annotations

import torch

from server.engine.models.int_grid import IntCodes, grid_params, to_codes
from server.quantize.awq import Sampling, scale_layer
from server.quantize.code_descent import descend_codes
from server.quantize.grid_search import group_gram, search_grid, shrink_ratios
from server.quantize.layerwise import (LayerInputs, calibrate_layers, module, observe_inputs,
                                       run_layer)

DAMP = 0.01
BLOCK_COLUMNS = 128
MSE_RATIOS = shrink_ratios(80, 0.8)  # the reference's grid: 1.0, 0.99, .., 0.2
MSE_GRID = True
TRUE_SEQUENTIAL = True
STATIC_GROUPS = True  # act-order's groups: runs of adjacent columns (False: GPTQModel's)
AWQ_SCALES = False  # AWQ's scales folded into each layer before its GPTQ (4 bits only)
AWQ_CLIP = False  # with them, AWQ's clipping of the scaled weights too (proxy: worse)
HESSIAN_GRID = True  # static groups' grids chosen by output error (H's diagonal blocks)
DESCENT_PASSES = 0  # coordinate-descent passes over the codes after GPTQ (code_descent.py)
# (modules sharing one input, quantized as one weight), the first of which is observed
FUSED_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


class Hessian:
    """Sum of x^T x over the observed rows x [tokens, in], as 2 X^T X / tokens."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        gram = x.t() @ x
        self.sum = gram if self.sum is None else self.sum + gram
        self.count += x.shape[0]

    def value(self) -> torch.Tensor:
        return 2 * self.sum / max(self.count, 1)


def inverse_factor(hessian: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Upper Cholesky factor of the dampened H's inverse; more dampening if H is not
    positive definite in float32."""
    diag = torch.arange(hessian.shape[0], device=hessian.device)
    for attempt in range(4):
        damped = hessian.clone()
        damped[diag, diag] += damp * 10 ** attempt * damped.diagonal().mean()
        factor, info = torch.linalg.cholesky_ex(damped)
        if not info:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if not info:
                return upper
    raise ValueError("GPTQ: the layer's Hessian stays singular after dampening")


def group_grid(groups: torch.Tensor, bits: int, *, symmetric: bool, min_zero: int, mse: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zeros) for groups [N, G, size] ([N, size]: one group per row): spanning each
    group's range, or (mse) the shrunk share of it that leaves the least rounding error."""
    if not mse:
        return grid_params(groups, bits, symmetric=symmetric, min_zero=min_zero)
    one = groups.dim() == 2
    scales, zeros, _ = search_grid(groups[:, None] if one else groups, bits, MSE_RATIOS,
                                   symmetric=symmetric, min_zero=min_zero)
    return (scales[:, 0], zeros[:, 0]) if one else (scales, zeros)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, group_size: int,
                  symmetric: bool = True, act_order: bool = True, min_zero: int = 1,
                  mse: bool = False, static_groups: bool = True) -> IntCodes:
    """weight [N, K] (float32) on the grid GPTQ chooses, with groups of group_size columns.
    act_order: columns are quantized in order of decreasing H diagonal (the inputs with the
    most energy first, while the most columns are left to absorb their error), each group's
    grid fixed beforehand from its own columns ("static groups"), so the groups stay runs of
    adjacent columns in the stored layout and no g_idx permutation is needed at run time.
    min_zero: 1 keeps asymmetric zero points storable in GPTQ's "gptq" layout (zero - 1).
    mse: each group's grid spans the shrunk share of its range with the least rounding error
    (grid_search.py; static groups: their share of the output error under H, HESSIAN_GRID)
    rather than its whole range.
    static_groups False (with act_order): GPTQModel's default, "desc_act": a new group starts
    every group_size columns in act-order, its grid from those columns as GPTQ has updated
    them; a group's columns lie scattered, and the codes carry each column's group (g_idx)."""

    def grid(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return group_grid(groups, bits, symmetric=symmetric, min_zero=min_zero, mse=mse)

    w = weight.float().clone()
    hessian = hessian.clone()
    dead = hessian.diagonal() == 0  # inputs never active: weight irrelevant, H singular
    hessian[dead, dead] = 1
    w[:, dead] = 0
    rows, cols = w.shape
    scales = torch.empty((rows, cols // group_size), device=w.device)
    zeros = torch.empty((rows, cols // group_size), dtype=torch.int32, device=w.device)
    order = torch.arange(cols, device=w.device)
    dynamic = not act_order or not static_groups  # each grid set as its first column comes
    if act_order:
        if static_groups and HESSIAN_GRID and mse:
            scales, zeros, _ = search_grid(w.reshape(rows, -1, group_size), bits, MSE_RATIOS,
                                           symmetric=symmetric, min_zero=min_zero,
                                           gram=group_gram(hessian, group_size))
        elif static_groups:
            scales, zeros = grid(w.reshape(rows, -1, group_size))
        order = torch.argsort(hessian.diagonal(), descending=True)
        w, hessian = w[:, order], hessian[order][:, order]
    position = torch.arange(cols, device=w.device)
    groups = ((position if dynamic else order) // group_size).tolist()
    upper = inverse_factor(hessian)
    codes = torch.empty((rows, cols), dtype=torch.int32, device=w.device)
    for start in range(0, cols, BLOCK_COLUMNS):
        end = min(start + BLOCK_COLUMNS, cols)
        block, errors = w[:, start:end].clone(), torch.zeros((rows, end - start), device=w.device)
        for i in range(end - start):
            column, g = start + i, groups[start + i]
            if dynamic and column % group_size == 0:  # its grid, from its columns now
                group = torch.cat((block[:, i:], w[:, end:]), dim=1)[:, :group_size]
                scales[:, g], zeros[:, g] = grid(group)
            code = to_codes(block[:, i], scales[:, g], zeros[:, g], bits)
            codes[:, order[column]] = code
            error = (block[:, i] - (code - zeros[:, g]) * scales[:, g]) / upper[column, column]
            block[:, i:] -= error[:, None] * upper[column, start + i:end][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    if DESCENT_PASSES and not dynamic:
        hessian = hessian[order.argsort()][:, order.argsort()]  # back to the columns' order
        hessian.diagonal().add_(DAMP * hessian.diagonal().mean())
        weight = weight.float().masked_fill(dead[None, :], 0)  # as GPTQ took it
        return descend_codes(weight, hessian, IntCodes(
            codes=codes, scales=scales, zeros=zeros, bits=bits, group_size=group_size),
            order=order, passes=DESCENT_PASSES)
    g_idx = None
    if act_order and not static_groups:
        g_idx = torch.empty(cols, dtype=torch.int32, device=w.device)
        g_idx[order] = (position // group_size).to(torch.int32)
    return IntCodes(codes=codes, scales=scales, zeros=zeros, bits=bits, group_size=group_size,
                    g_idx=g_idx)


def split_rows(codes: IntCodes, sizes: list[int]) -> list[IntCodes]:
    """A fused weight's codes cut back into its parts (rows)."""
    parts, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        parts.append(IntCodes(codes=codes.codes[rows], scales=codes.scales[rows],
                              zeros=codes.zeros[rows], bits=codes.bits,
                              group_size=codes.group_size, g_idx=codes.g_idx))
        start += size
    return parts


def calibrate_gptq(model, blocks: list[torch.Tensor], *, bits: int, group_size: int | None,
                   symmetric: bool = False, prefix: str = "model.layers",
                   true_sequential: bool = TRUE_SEQUENTIAL, awq_scales: bool | None = None,
                   static_groups: bool | None = None) -> dict[str, IntCodes]:
    """GPTQ over every decoder layer: {"model.layers.I.self_attn.q_proj": codes, ...}. The
    model's linear weights become their quantized values, so each layer calibrates on what
    the quantized layers before it produce. group_size None: one group per row.
    true_sequential: within a layer too, each fused group's H comes from a run of the layer
    with the groups before it quantized (o_proj sees quantized q|k|v, gate|up a quantized
    attention, down_proj quantized gate|up), as GPTQ's reference does; else all four from
    one run of the layer as it came. awq_scales (default AWQ_SCALES, 4 bits only): each
    layer first gets AWQ's scales folded in (awq.py; the norms and v_proj's, up_proj's rows
    absorb them), so GPTQ rounds weights whose salient input channels are scaled up.
    static_groups (default STATIC_GROUPS): False quantizes with dynamic act-order groups,
    whose codes carry g_idx (gptq_quantize)."""
    found: dict[str, IntCodes] = {}
    static_groups = STATIC_GROUPS if static_groups is None else static_groups
    awq_scales = (AWQ_SCALES if awq_scales is None else awq_scales) and bits == 4
    sampling = Sampling.of(blocks)

    def quantize_group(index: int, layer, group: tuple[str, ...], hessian: Hessian) -> None:
        linears = [module(layer, name) for name in group]
        weight = torch.cat([linear.weight.data.float() for linear in linears])
        codes = gptq_quantize(weight, hessian.value(), bits=bits,
                              group_size=group_size or weight.shape[1],
                              symmetric=symmetric, mse=MSE_GRID, static_groups=static_groups)
        for name, linear, part in zip(group, linears, split_rows(
                codes, [linear.weight.shape[0] for linear in linears])):
            linear.weight.data.copy_(part.dequantize())
            found[f"{prefix}.{index}.{name}"] = part

    def step(index: int, layer, inputs):
        if awq_scales:
            scale_layer(layer, inputs, group_size=group_size, sampling=sampling, clip=AWQ_CLIP)
        if true_sequential:
            for group in FUSED_GROUPS:
                quantize_group(index, layer, group, observed_hessian(layer, inputs, group[0]))
            return None
        hessians = {group[0]: Hessian() for group in FUSED_GROUPS}
        with torch.no_grad(), observe_inputs(layer, tuple(hessians),
                                             lambda name, x: hessians[name].add(x)):
            run_layer(layer, inputs)
        for group in FUSED_GROUPS:
            quantize_group(index, layer, group, hessians[group[0]])
        return None  # run again: the next layer sees this one quantized

    calibrate_layers(model, blocks, step, desc="gptq")
    return found


class _Observed(Exception):
    """Raised once a block's input to the observed module is taken: the rest of the layer
    is not needed."""


@torch.no_grad()
def observed_hessian(layer, inputs: LayerInputs, name: str) -> Hessian:
    """H of the inputs the layer, as it is now, hands module `name` on each block (each
    block's run stops there)."""
    hessian = Hessian()

    def observe(_name: str, x: torch.Tensor) -> None:
        hessian.add(x)
        raise _Observed

    with observe_inputs(layer, (name,), observe):
        for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
            try:
                layer(hidden, **kwargs)
            except _Observed:
                pass
    return hessian
