"""SmoothQuant (Xiao et al., 2022): activations have a few channels with large outliers, which
per-token int8 rounds badly; dividing those channels by s and multiplying the weights'
matching input columns by s moves part of the range into the weights, which per-channel
int8 holds easily. The division is folded into the norm before the layer, so it costs
nothing at run time:

    s_j = max|x_j|^a / max|w_j|^(1-a),  a = 0.5
        (max|x_j|: channel j's largest magnitude over the calibration tokens; max|w_j|: input
        column j's largest magnitude over the layers that read x)

applied to input_layernorm -> q, k, v and post_attention_layernorm -> gate, up. o_proj and
down_proj have no norm before them to fold into; they are quantized as they are.
"""

from __future__ import annotations

import torch

from server.quantize.layerwise import calibrate_layers, module, observe_inputs, run_layer

ALPHA = 0.5
MIN_SCALE = 1e-5
SMOOTHED_GROUPS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj",
                                        "self_attn.v_proj")),
                   ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))


def smoothing_scales(act_max: torch.Tensor, weights: list[torch.Tensor],
                     alpha: float = ALPHA) -> torch.Tensor:
    """s [in] from the activations' per-channel maxima and the weights that read them."""
    weight_max = torch.cat([w.float() for w in weights]).abs().amax(dim=0)
    scales = act_max.clamp(min=MIN_SCALE).pow(alpha) / weight_max.clamp(min=MIN_SCALE).pow(
        1 - alpha)
    return scales.clamp(min=MIN_SCALE)


@torch.no_grad()
def smooth(layer, norm: str, targets: tuple[str, ...], scales: torch.Tensor) -> None:
    """The norm's output divided by scales; the targets' input columns multiplied by them."""
    module(layer, norm).weight.div_(scales)
    for name in targets:
        module(layer, name).weight.mul_(scales[None, :])


def calibrate_smoothquant(model, blocks: list[torch.Tensor], *, alpha: float = ALPHA) -> None:
    """Folds SmoothQuant's smoothing into every decoder layer of `model`, in place; the
    caller then rounds every linear weight to int8, one scale per output channel."""

    def step(_index: int, layer, inputs):
        maxima: dict[str, torch.Tensor] = {}

        def observe(name: str, x: torch.Tensor) -> None:
            found = x.abs().amax(dim=0)
            maxima[name] = found if name not in maxima else torch.maximum(maxima[name], found)

        observed = tuple(targets[0] for _, targets in SMOOTHED_GROUPS)
        with observe_inputs(layer, observed, observe):
            outputs = run_layer(layer, inputs)  # smoothing keeps the function: reuse them
        for norm, targets in SMOOTHED_GROUPS:
            weights = [module(layer, name).weight for name in targets]
            smooth(layer, norm, targets, smoothing_scales(maxima[targets[0]], weights, alpha))
        return outputs

    calibrate_layers(model, blocks, step, desc="smoothquant")
