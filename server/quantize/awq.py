"""AWQ (Lin et al., 2023): before 4-bit rounding, each input channel of a linear weight is
scaled up by s and its input scaled down by the same s, folded into whatever writes that
input (the preceding norm, or the previous linear layer's rows), so the layer's function is
unchanged but the channels that carry large activations lose less to rounding.

    s = mean|x|^a / mean|w~|^(1-a),  normalised to sqrt(max s * min s) = 1
        (mean|w~|: each weight's magnitude relative to its group's largest, averaged over
        the output rows; a searched over 0, 0.05, .., 0.95)
    loss(a) = mean over tokens of || Q(W diag(s)) diag(s)^-1 x - W x ||^2   (Q: 4-bit groups)

The search runs on a sample of the calibration tokens (every k-th, about 2048), measuring
the error on the scaled linear layers' own outputs rather than through attention, so that
tokens are independent and a CPU gets through it; mean|x| uses every token. Per layer:

    input_layernorm  -> q, k, v        post_attention_layernorm -> gate, up
    v                -> o (when v's outputs are o's inputs: no grouped kv heads)
    up               -> down
"""

from __future__ import annotations

import torch

from server.engine.models.int_grid import round_to_nearest
from server.quantize.layerwise import calibrate_layers, module, observe_inputs, run_layer

GRID = 20
SEARCH_TOKENS = 2048
MIN_SCALE = 1e-4
# (what writes the input, the linear layers reading it); the input observed is the first's
SCALED_GROUPS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj",
                                      "self_attn.v_proj")),
                 ("self_attn.v_proj", ("self_attn.o_proj",)),
                 ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
                 ("mlp.up_proj", ("mlp.down_proj",)))


class InputStats:
    """Mean |x| per channel over every observed token, and every stride-th token kept."""

    def __init__(self, stride: int) -> None:
        self.stride, self.seen = stride, 0
        self.abs_sum: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        total = x.abs().sum(dim=0)
        self.abs_sum = total if self.abs_sum is None else self.abs_sum + total
        first = (-self.seen) % self.stride  # keep global token indices 0, stride, 2 stride ..
        self.samples.append(x[first::self.stride])
        self.seen += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.seen, 1)

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples)


def relative_magnitude(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per input channel: |w| over its group's largest |w|, averaged over the rows."""
    rows, cols = weight.shape
    groups = weight.abs().reshape(rows, cols // group_size, group_size)
    relative = groups / groups.amax(dim=-1, keepdim=True).clamp(min=1e-12)
    return relative.reshape(rows, cols).mean(dim=0)


def fake_quantize(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    return round_to_nearest(weight, bits=4, group_size=group_size,
                            symmetric=False).dequantize()


@torch.no_grad()
def search_scales(weights: list[torch.Tensor], stats: InputStats, group_size: int
                  ) -> torch.Tensor:
    """The per-input-channel scales s [in] with the least output error after rounding."""
    w = torch.cat([weight.float() for weight in weights])
    x = stats.sample()
    reference = x @ w.t()
    x_mean, w_mean = stats.mean(), relative_magnitude(w, group_size)
    best_loss, best = float("inf"), torch.ones_like(x_mean)
    for step in range(GRID):
        ratio = step / GRID
        s = (x_mean.pow(ratio) / w_mean.pow(1 - ratio).clamp(min=MIN_SCALE)).clamp(min=MIN_SCALE)
        s = s / (s.max() * s.min()).sqrt()
        loss = float((x @ (fake_quantize(w * s, group_size) / s).t() - reference)
                     .pow(2).mean())
        if loss < best_loss:
            best_loss, best = loss, s
    return best


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


def calibrate_awq(model, blocks: list[torch.Tensor], *, group_size: int) -> None:
    """Searches and folds AWQ's scales into every decoder layer of `model`, in place; the
    caller then rounds the linear weights (4 bits, zero points, groups of group_size)."""
    total = sum(block.shape[1] for block in blocks)
    stride = max(1, total // SEARCH_TOKENS)

    def step(_index: int, layer, inputs):
        groups = [(source, targets) for source, targets in SCALED_GROUPS
                  if source != "self_attn.v_proj" or _feeds(layer, source, targets[0])]
        stats = {targets[0]: InputStats(stride) for _, targets in groups}
        with observe_inputs(layer, tuple(stats), lambda name, x: stats[name].add(x)):
            outputs = run_layer(layer, inputs)  # scaling keeps the function: reuse them
        scales = [search_scales([module(layer, name).weight for name in targets],
                                stats[targets[0]], group_size) for _, targets in groups]
        for (source, targets), s in zip(groups, scales):
            apply_scales(layer, source, targets, s)
        return outputs

    calibrate_layers(model, blocks, step, desc="awq")


def _feeds(layer, source: str, target: str) -> bool:
    """Whether each output of `source` is exactly one input of `target` (v -> o without
    grouped kv heads, whose v outputs are read by several heads' columns)."""
    return module(layer, source).weight.shape[0] == module(layer, target).weight.shape[1]
