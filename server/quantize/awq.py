"""AWQ (Lin et al., 2023): before 4-bit rounding, each input channel of a linear weight is
scaled up by s and its input scaled down by the same s, folded into whatever writes that
input (the preceding norm, or the previous linear layer's rows), so the layer's function is
unchanged but the channels that carry large activations lose less to rounding.

    s = mean|x|^a / mean|w~|^(1-a),  normalised to sqrt(max s * min s) = 1
        (mean|w~|: each weight's magnitude relative to its group's largest, averaged over
        the output rows; a searched over 0, 0.05, .., 0.95)
    loss(a) = mean squared error of the block's output with each W of the group replaced
              by Q(W diag(s)) diag(s)^-1 (Q: 4-bit groups), as AutoAWQ measures it:
        q, k, v    the attention's output (o_proj included), on whole calibration blocks
                   (every k-th, about 4096 tokens: attention mixes a block's tokens)
        gate, up   the MLP's output (down_proj included), on the sampled tokens below
        o, down    the linear layer's own output, from the inputs' Gram matrix G = X^T X / T:
                   sum((D G) * D),  D = Q(W diag(s)) diag(s)^-1 - W
    On SmolLM2-135M (groups of 64, calibrating on 64 prompts, perplexity on 50 other
    calibration prompts, 26.97 in float32): 30.95 with the block outputs, 31.18 with every
    group measured on its linear layers' own outputs.

Then AWQ's clipping: each (output row, group) of every scaled weight is clipped to the share
r of its range [lo, hi] (r in 1.0, 0.975, .., 0.5) whose rounding leaves the least error in
that group's share of the output, d^T G_g d (grid_search.py; G_g: the group's block of the
scaled inputs' Gram matrix). Clipping the few largest weights of a group makes its grid finer
for the rest; on SmolLM2-135M (groups of 64, calibrating on 100 prompts, perplexity on 100
other calibration prompts) it took the error over float32 from +15.7 % to +12.7 %.

The linear layers' losses are quadratic in x, so the Gram matrix of a sample of the
calibration tokens (every k-th, about 2048) holds all they need; the MLP's error is measured
on the same tokens and the attention's on a fixed share of the blocks, so no search's cost
grows with the calibration set; mean|x| uses every token. Per layer:

    input_layernorm  -> q, k, v        post_attention_layernorm -> gate, up
    v                -> o (when v's outputs are o's inputs: no grouped kv heads)
    up               -> down
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from server.engine.models.int_grid import round_to_nearest
from server.quantize.grid_search import group_gram, search_grid, shrink_ratios
from server.quantize.layerwise import (LayerInputs, calibrate_layers, module, observe_inputs,
                                       run_layer)

GRID = 20
SEARCH_TOKENS = 2048
ATTENTION_TOKENS = 4096
BLOCK_LOSS = True
CLIP_RATIOS = shrink_ratios(20, 0.5)  # 1.0, 0.975, .., 0.5
MIN_SCALE = 1e-4
# (what writes the input, the linear layers reading it); the input observed is the first's
SCALED_GROUPS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj",
                                      "self_attn.v_proj")),
                 ("self_attn.v_proj", ("self_attn.o_proj",)),
                 ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
                 ("mlp.up_proj", ("mlp.down_proj",)))


class InputStats:
    """Mean |x| per channel over every observed token, and the Gram matrix X^T X of every
    stride-th token (the losses below are quadratic in x, so it holds all they need)."""

    def __init__(self, stride: int, keep_rows: bool = False) -> None:
        self.stride, self.seen, self.sampled = stride, 0, 0
        self.abs_sum: torch.Tensor | None = None
        self.gram_sum: torch.Tensor | None = None
        self.rows: list[torch.Tensor] | None = [] if keep_rows else None

    def add(self, x: torch.Tensor) -> None:
        total = x.abs().sum(dim=0)
        self.abs_sum = total if self.abs_sum is None else self.abs_sum + total
        first = (-self.seen) % self.stride  # keep global token indices 0, stride, 2 stride ..
        kept = x[first::self.stride]
        gram = kept.t() @ kept
        self.gram_sum = gram if self.gram_sum is None else self.gram_sum + gram
        if self.rows is not None:
            self.rows.append(kept)
        self.sampled += kept.shape[0]
        self.seen += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.seen, 1)

    def gram(self) -> torch.Tensor:
        """X^T X / tokens over the kept tokens: mean_t ||D x_t||^2 = sum((D G) * D)."""
        return self.gram_sum / max(self.sampled, 1)


def relative_magnitude(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per input channel: |w| over its group's largest |w|, averaged over the rows."""
    rows, cols = weight.shape
    groups = weight.abs().reshape(rows, cols // group_size, group_size)
    relative = groups / groups.amax(dim=-1, keepdim=True).clamp(min=1e-12)
    return relative.reshape(rows, cols).mean(dim=0)


def fake_quantize(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    return round_to_nearest(weight, bits=4, group_size=group_size,
                            symmetric=False).dequantize()


def output_error(delta: torch.Tensor, gram: torch.Tensor) -> float:
    """mean over tokens of ||delta x||^2, from the inputs' Gram matrix."""
    return float(((delta @ gram) * delta).sum())


@torch.no_grad()
def search_scales(weights: list[torch.Tensor], stats: InputStats, group_size: int | None,
                  loss: Callable[[list[torch.Tensor]], float] | None = None) -> torch.Tensor:
    """The per-input-channel scales s [in] with the least output error after rounding:
    loss(the weights as rounded with s, each Q(W s) / s) if given (the error of the block
    the weights belong to), else the error of the linear layers' own outputs."""
    w = torch.cat([weight.float() for weight in weights])
    group_size = group_size or w.shape[1]
    gram = stats.gram()
    x_mean, w_mean = stats.mean(), relative_magnitude(w, group_size)
    best_loss, best = float("inf"), torch.ones_like(x_mean)
    for step in range(GRID):
        ratio = step / GRID
        s = (x_mean.pow(ratio) / w_mean.pow(1 - ratio).clamp(min=MIN_SCALE)).clamp(min=MIN_SCALE)
        s = s / (s.max() * s.min()).sqrt()
        if loss is None:
            error = output_error(fake_quantize(w * s, group_size) / s - w, gram)
        else:
            error = loss([fake_quantize(weight.float() * s, group_size) / s
                          for weight in weights])
        if error < best_loss:
            best_loss, best = error, s
    return best


@torch.no_grad()
def block_loss(modules: list[torch.nn.Module], run: Callable[[], list[torch.Tensor]]
               ) -> Callable[[list[torch.Tensor]], float]:
    """loss(weights): the mean squared difference of run()'s outputs with the modules'
    weights swapped for `weights` against run()'s outputs as the modules are now."""
    reference = run()
    count = sum(out.numel() for out in reference)

    @torch.no_grad()
    def loss(weights: list[torch.Tensor]) -> float:
        originals = [linear.weight.data for linear in modules]
        for linear, weight in zip(modules, weights):
            linear.weight.data = weight.to(linear.weight.dtype)
        try:
            outputs = run()
        finally:
            for linear, original in zip(modules, originals):
                linear.weight.data = original
        return sum(float((out - ref).pow(2).sum()) for out, ref in zip(outputs, reference)
                   ) / count

    return loss


@torch.no_grad()
def clip_weight(weight: torch.Tensor, gram: torch.Tensor, group_size: int | None
                ) -> torch.Tensor:
    """Clips each (row, group) of weight [N, K], in place, to the shrunk range [r lo, r hi]
    with the least output error once rounded (grid_search.py; gram: the inputs' X^T X / T),
    so the rounding that follows spans it. Returns the ratios r [N, G]."""
    rows, cols = weight.shape
    group_size = group_size or cols
    groups = weight.float().reshape(rows, cols // group_size, group_size)
    _, _, ratios = search_grid(groups, 4, CLIP_RATIOS, symmetric=False,
                               gram=group_gram(gram, group_size))
    low = groups.amin(dim=-1).clamp(max=0) * ratios
    high = groups.amax(dim=-1).clamp(min=0) * ratios
    clipped = torch.maximum(torch.minimum(groups, high[..., None]), low[..., None])
    weight.copy_(clipped.reshape(rows, cols))
    return ratios


@torch.no_grad()
def apply_scales(layer, source: str, targets: tuple[str, ...], s: torch.Tensor) -> None:
    """Divides what `source` writes by s and multiplies the targets' input columns by s."""
    writer = module(layer, source)
    if isinstance(writer, torch.nn.Linear):  # its output rows (and bias) are the inputs
        writer.weight.div_(s[:, None])
        if writer.bias is not None:
            writer.bias.div_(s)
    else:  # an RMSNorm: its weight scales each channel
        writer.weight.div_(s)
    for name in targets:
        module(layer, name).weight.mul_(s[None, :])


def calibrate_awq(model, blocks: list[torch.Tensor], *, group_size: int,
                  block_loss_search: bool | None = None) -> None:
    """Searches and folds AWQ's scales into every decoder layer of `model`, in place, then
    clips its weights; the caller then rounds the linear weights (4 bits, zero points,
    groups of group_size). block_loss_search (default BLOCK_LOSS): q|k|v's scales are chosen
    by the error of the attention's output (o_proj included) on a sample of whole blocks,
    gate|up's by the error of the MLP's output on the sampled tokens, as AutoAWQ does; else
    by the linear layers' own output error."""
    sampling = Sampling.of(blocks)
    calibrate_layers(model, blocks, lambda _index, layer, inputs: scale_layer(
        layer, inputs, group_size=group_size, sampling=sampling,
        block_loss_search=block_loss_search), desc="awq")


class Sampling:
    """Which calibration tokens the searches measure: every `stride`-th token for the
    Gram matrices (about SEARCH_TOKENS), every `block_stride`-th block, whole, for the
    attention's error (about ATTENTION_TOKENS)."""

    def __init__(self, stride: int, block_stride: int) -> None:
        self.stride, self.block_stride = stride, block_stride

    @classmethod
    def of(cls, blocks: list[torch.Tensor]) -> "Sampling":
        total = sum(block.shape[1] for block in blocks)
        return cls(max(1, total // SEARCH_TOKENS), max(1, round(total / ATTENTION_TOKENS)))


def scale_layer(layer, inputs: LayerInputs, *, group_size: int | None, sampling: Sampling,
                block_loss_search: bool | None = None, clip: bool = True
                ) -> list[torch.Tensor]:
    """AWQ on one decoder layer, in place: its scales searched and folded (the layer's
    function unchanged), then, if clip, each scaled weight's groups clipped (group_size
    None: one group per row). Returns the layer's outputs on `inputs`, computed before any
    change (the same function, so the next layer's inputs when nothing is clipped or
    rounded)."""
    block_loss_search = BLOCK_LOSS if block_loss_search is None else block_loss_search
    groups = [(source, targets) for source, targets in SCALED_GROUPS
              if source != "self_attn.v_proj" or _feeds(layer, source, targets[0])]
    stats = {targets[0]: InputStats(sampling.stride, keep_rows=block_loss_search
                                    and targets[0] == "mlp.gate_proj")
             for _, targets in groups}
    attention_calls: list[dict] = []
    calls = 0

    def record_attention(_module, args, kwargs):
        nonlocal calls
        if calls % sampling.block_stride == 0:
            attention_calls.append({**kwargs, **({"hidden_states": args[0]} if args else {})})
        calls += 1

    handle = (module(layer, "self_attn").register_forward_pre_hook(
        record_attention, with_kwargs=True) if block_loss_search else None)
    try:
        with observe_inputs(layer, tuple(stats), lambda name, x: stats[name].add(x)):
            outputs = run_layer(layer, inputs)
    finally:
        if handle is not None:
            handle.remove()
    losses: dict[str, Callable[[list[torch.Tensor]], float]] = {}
    if block_loss_search:
        attention = module(layer, "self_attn")
        losses["self_attn.q_proj"] = block_loss(
            [module(layer, name) for name in SCALED_GROUPS[0][1]],
            lambda: [attention(**call)[0] for call in attention_calls])
        if "mlp.gate_proj" in stats:
            mlp, rows = module(layer, "mlp"), torch.cat(stats["mlp.gate_proj"].rows)
            losses["mlp.gate_proj"] = block_loss(
                [module(layer, name) for name in SCALED_GROUPS[2][1]], lambda: [mlp(rows)])
    scales = [search_scales([module(layer, name).weight for name in targets],
                            stats[targets[0]], group_size, losses.get(targets[0]))
              for _, targets in groups]
    for (source, targets), s in zip(groups, scales):
        apply_scales(layer, source, targets, s)
        if not clip:
            continue
        gram = stats[targets[0]].gram() / (s[:, None] * s[None, :])  # inputs now x / s
        # q and k too, which AutoAWQ leaves unclipped: held out, leaving them was worse (groups
        # of 32 +9.45 % over bf16 against +8.72 %, of 64 +15.23 % against +15.01 %;
        # docs/benchmarks.md, issue 21), though the proxy liked it (27.03 -> 26.91)
        for name in targets:
            clip_weight(module(layer, name).weight.data, gram, group_size)
    return outputs


def _feeds(layer, source: str, target: str) -> bool:
    """Whether each output of `source` is exactly one input of `target` (v -> o without
    grouped kv heads, whose v outputs are read by several heads' columns)."""
    return module(layer, source).weight.shape[0] == module(layer, target).weight.shape[1]
