"""SmoothQuant (Xiao et al., 2022): activations have a few channels with large outliers, which
per-token int8 rounds badly; dividing those channels by s and multiplying the weights'
matching input columns by s moves part of the range into the weights, which per-channel
int8 holds easily. The division is folded into whatever writes the input (a norm's weight,
or the rows of the linear layer before), so it costs nothing at run time and the checkpoint
stays plain compressed-tensors W8A8:

    s_j(a) = max|x_j|^a / max|w_j|^(1-a)
        (max|x_j|: channel j's largest magnitude over every calibration token; max|w_j|: input
        column j's largest magnitude over the layers that read x)
    a = argmin over {none, 0, 0.1, .., 1} of, summed over sampled tokens x,
        || Qa(x / s(a)) Qw(W s(a))^T - x W^T ||^2 / || x W^T ||^2
        (Qa: int8 per token, as the engine rounds activations; Qw: int8 per output channel,
        as the checkpoint stores weights; "none": s = 1, left unsmoothed)

The paper fixes a = 0.5; searching it per group and layer (as Intel Neural Compressor's
auto-alpha does) lets each layer trade activation against weight error where its own
outliers put the balance. Per decoder layer:

    input_layernorm          -> q, k, v     (the norm's weight / s)
    post_attention_layernorm -> gate, up
    v                        -> o           (v's rows / s; o's columns * s)
    up                       -> down        (up's rows / s: SiLU(gate) * up is linear in up)

Attention mixes tokens, never channels, so v's output channel j reaches o's input channel j
of every query head that reads v's kv head: under grouped-query attention o's columns take
each kv head's scales repeated for its query heads, and s is chosen from the maxima over
them. Dividing a weight's rows costs its own per-output-channel rounding nothing (each row's
int8 scale divides with it), so smoothing v and up leaves their rounding as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from server.quantize.layerwise import calibrate_layers, module, observe_inputs, run_layer
from server.quantize.smooth_search import TokenSample, search_alpha, smoothing_scales

logger = logging.getLogger("inflightd.quantize")
__all__ = ["GROUPS", "Group", "calibrate_smoothquant", "channel_index", "smooth",
           "smoothing_scales"]


@dataclass(frozen=True)
class Group:
    source: str  # what writes the targets' input: a norm, or a linear layer (its rows)
    targets: tuple[str, ...]  # the linear layers reading that input; the first is observed


GROUPS = (Group("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj",
                                    "self_attn.v_proj")),
          Group("self_attn.v_proj", ("self_attn.o_proj",)),
          Group("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
          Group("mlp.up_proj", ("mlp.down_proj",)))


def channel_index(layer, group: Group) -> torch.Tensor | None:
    """For each input column of the group's targets, the source channel that writes it; None
    where they are the same channels (every group but v -> o under grouped-query attention)."""
    sources = module(layer, group.source).weight.shape[0]
    columns = module(layer, group.targets[0]).weight.shape[1]
    if sources == columns:
        return None
    head_dim = getattr(module(layer, "self_attn"), "head_dim", None)
    if group.source != "self_attn.v_proj" or not head_dim or columns % sources \
            or sources % head_dim:
        raise ValueError(f"{group.source} writes {sources} channels, {group.targets[0]} "
                         f"reads {columns}: no exact smoothing between them")
    repeat = columns // sources  # query heads per kv head, heads in order (repeat_kv's)
    kv_head = torch.arange(columns) // (head_dim * repeat)
    return kv_head * head_dim + torch.arange(columns) % head_dim


@torch.no_grad()
def smooth(layer, group: Group, scales: torch.Tensor,
           index: torch.Tensor | None = None) -> None:
    """The source's output divided by scales [source channels]; the targets' input columns
    multiplied by them (scales[index] where the targets read channels repeated)."""
    source = module(layer, group.source)
    if isinstance(source, torch.nn.Linear):
        source.weight.div_(scales[:, None].to(source.weight.dtype))
        if source.bias is not None:
            source.bias.div_(scales.to(source.bias.dtype))
    else:
        source.weight.div_(scales.to(source.weight.dtype))
    columns = scales if index is None else scales[index]
    for name in group.targets:
        weight = module(layer, name).weight
        weight.mul_(columns[None, :].to(weight.dtype))


def smooth_group(layer, group: Group, sample: TokenSample, alphas) -> float | None:
    """Searches the group's alpha on its sampled inputs and folds the chosen scales in;
    returns the alpha (None: left unsmoothed)."""
    index = channel_index(layer, group)
    weights = [module(layer, name).weight.detach().float() for name in group.targets]
    alpha, scales = search_alpha(sample, weights, index, alphas)
    if scales is not None:
        smooth(layer, group, scales, index)
    return alpha


def calibrate_smoothquant(model, blocks: list[torch.Tensor], *,
                          alphas: tuple[float, ...] | None = None) -> dict[str, list]:
    """Folds SmoothQuant's smoothing into every decoder layer of `model`, in place; the
    caller then rounds every linear weight to int8, one scale per output channel. alphas:
    the grid searched (one value: that alpha everywhere). Returns the alphas chosen, per
    group source, layer by layer (None: unsmoothed), for the log."""
    from server.quantize.smooth_search import ALPHA_GRID, SEARCH_TOKENS

    alphas = ALPHA_GRID if alphas is None else alphas
    total = sum(block.shape[1] for block in blocks)
    stride = max(1, total // SEARCH_TOKENS)
    chosen: dict[str, list] = {group.source: [] for group in GROUPS}

    def step(_index: int, layer, inputs):
        samples = {group.targets[0]: TokenSample(stride) for group in GROUPS}
        with observe_inputs(layer, tuple(samples), lambda name, x: samples[name].add(x)):
            outputs = run_layer(layer, inputs)  # smoothing keeps the function: reuse them
        for group in GROUPS:
            chosen[group.source].append(
                smooth_group(layer, group, samples[group.targets[0]], alphas))
        return outputs

    calibrate_layers(model, blocks, step, desc="smoothquant")
    for source, picked in chosen.items():  # None (unsmoothed) shows as "-"
        logger.info("smoothquant alpha after %s, by layer: %s", source,
                    " ".join("-" if a is None else f"{a:g}" for a in picked))
    return chosen
