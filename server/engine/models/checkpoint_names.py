"""Checkpoint tensors of families that name them their own way, renamed to the engine's.

GPT-2 and GPTBigCode checkpoints (`transformer.h.N.attn.c_attn.weight`, or the same
without the `transformer.` prefix in the original GPT-2 ones) get the names the other
families use (`model.layers.N.self_attn.qkv_proj.weight`), and GPT-2's Conv1D weights,
stored [in, out], are transposed to the [out, in] of a linear layer. The attention-mask buffers some GPT-2
checkpoints carry are dropped. MPT's (`transformer.blocks.N.attn.Wqkv.weight`) are renamed
the same way. Every other family passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from server.engine.models.config import GPT2_STYLE_ARCHITECTURES, ModelArchConfig

_GPT2_TOP = {"wte.weight": "model.embed_tokens.weight",
             "wpe.weight": "model.embed_positions.weight",
             "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"}
_GPT2_LAYER = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm",
               "attn.c_attn": "self_attn.qkv_proj", "attn.c_proj": "self_attn.o_proj",
               "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}
_GPT2_LAYER_NAME = re.compile(r"h\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|"
                              r"mlp\.c_proj)\.(weight|bias)")
_GPT2_MASK_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


_MPT_TOP = {"wte.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight"}
_MPT_LAYER = {"norm_1": "input_layernorm", "norm_2": "post_attention_layernorm",
              "attn.Wqkv": "self_attn.qkv_proj", "attn.out_proj": "self_attn.o_proj",
              "ffn.up_proj": "mlp.c_fc", "ffn.down_proj": "mlp.c_proj"}
_MPT_LAYER_NAME = re.compile(r"blocks\.(\d+)\.(norm_1|norm_2|attn\.Wqkv|attn\.out_proj|"
                             r"ffn\.up_proj|ffn\.down_proj)\.(weight|bias)")


def engine_name(arch: ModelArchConfig, name: str) -> tuple[str, bool] | None:
    """(the engine's name for a stored tensor, whether it is stored transposed), or None
    for a tensor the engine does not use."""
    if arch.architecture == "MptForCausalLM":
        return _mpt_name(name), False
    if arch.architecture not in GPT2_STYLE_ARCHITECTURES:
        return name, False
    short = name.removeprefix("transformer.")
    if _GPT2_MASK_BUFFERS.fullmatch(short):
        return None
    if short in _GPT2_TOP:
        return _GPT2_TOP[short], False
    match = _GPT2_LAYER_NAME.fullmatch(short)
    if match is None:
        return name, False  # lm_head.weight, or unknown: the loader names it
    layer, part, kind = match.groups()
    # GPT-2's Conv1D stores [in, out]; GPTBigCode's Linear layers store [out, in]
    conv1d = (arch.architecture == "GPT2LMHeadModel" and kind == "weight"
              and part not in ("ln_1", "ln_2"))
    return f"model.layers.{layer}.{_GPT2_LAYER[part]}.{kind}", conv1d


def engine_named(arch: ModelArchConfig, weights: Iterable[tuple[str, torch.Tensor]]
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's (name, tensor) pairs under the engine's names, as [out, in]."""
    for name, tensor in weights:
        mapped = engine_name(arch, name)
        if mapped is not None:
            name, transposed = mapped
            yield name, tensor.t().contiguous() if transposed else tensor


def _mpt_name(name: str) -> str:
    short = name.removeprefix("transformer.")
    if short in _MPT_TOP:
        return _MPT_TOP[short]
    match = _MPT_LAYER_NAME.fullmatch(short)
    if match is None:
        return name
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_MPT_LAYER[part]}.{kind}"
