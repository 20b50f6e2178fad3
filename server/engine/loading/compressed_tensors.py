"""compressed-tensors checkpoints (llm-compressor's format, which vLLM reads): the two
variants the engine runs, recognised from config.json's quantization_config.

    format "int-quantized"    W8A8 int8: X.weight int8 [out, in], X.weight_scale [out, 1]
                              (one scale per output channel, symmetric), activations
                              quantized per token at run time (dynamic)
    format "float-quantized"  FP8: X.weight float8_e4m3fn [out, in], X.weight_scale [out, 1],
                              activations per token, dynamic (the engine's --quantization fp8)

Each is one config group targeting "Linear", ignoring at most lm_head. Anything else (static
activation scales, groups, asymmetric weights, several groups, packed int4) is refused by name.
"""

from __future__ import annotations

from typing import Any

from server.engine.models.errors import UnsupportedModelError

CT_METHOD = "compressed-tensors"
# format -> (weights type, the engine's name for the scheme)
CT_FORMATS = {"int-quantized": ("int", "w8a8"), "float-quantized": ("float", "fp8")}


def ct_scheme(config: dict[str, Any]) -> str:
    """"w8a8" or "fp8" for a compressed-tensors quantization_config the engine runs; raises
    UnsupportedModelError naming what it does not."""
    fmt = config.get("format")
    if fmt not in CT_FORMATS:
        raise UnsupportedModelError(
            f"compressed-tensors format {fmt!r} is not supported (int-quantized W8A8 or "
            f"float-quantized FP8)")
    groups = config.get("config_groups") or {}
    if len(groups) != 1:
        raise UnsupportedModelError(f"compressed-tensors checkpoints with {len(groups)} config "
                                    "groups are not supported (one group for every Linear)")
    group, = groups.values()
    weight_type, scheme = CT_FORMATS[fmt]
    _check_group(group, weight_type, fmt)
    ignored = [name for name in config.get("ignore") or () if name != "lm_head"]
    if ignored:
        raise UnsupportedModelError(f"compressed-tensors checkpoints that leave linear layers "
                                    f"unquantized (ignore: {ignored[:3]}) are not supported")
    return scheme


def _check_group(group: dict[str, Any], weight_type: str, fmt: str) -> None:
    weights, inputs = group.get("weights") or {}, group.get("input_activations") or {}
    if group.get("targets") != ["Linear"]:
        raise UnsupportedModelError(f"compressed-tensors targets {group.get('targets')} are not "
                                    "supported (['Linear'])")
    wanted_weights = {"num_bits": 8, "type": weight_type, "strategy": "channel",
                      "symmetric": True}
    wanted_inputs = {"num_bits": 8, "type": weight_type, "strategy": "token", "dynamic": True}
    for part, found, wanted in (("weights", weights, wanted_weights),
                                ("input_activations", inputs, wanted_inputs)):
        differs = {key: found.get(key) for key, value in wanted.items()
                   if found.get(key) != value}
        if differs:
            raise UnsupportedModelError(
                f"compressed-tensors {fmt} with {part} {differs} is not supported "
                f"({part}: {wanted})")
    if group.get("output_activations"):
        raise UnsupportedModelError("compressed-tensors output activation quantization is not "
                                    "supported")
