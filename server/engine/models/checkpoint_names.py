"""Checkpoint tensors of families that name them their own way, renamed to the engine's.

GPT-2, GPTBigCode, MPT and BLOOM checkpoints (`transformer.h.N.attn.c_attn.weight`, with or
without the `transformer.` prefix) get the names the other families use
(`model.layers.N.self_attn.qkv_proj.weight`), and their tensors the engine's layout:

    as_is        stored as the engine holds it
    transposed   GPT-2's Conv1D weights, stored [in, out]: the engine's [out, in] is .t()
    per_head     BLOOM's fused q|k|v, stored head by head ([q0 k0 v0 | q1 k1 v1 | ...]):
                 the engine's is [q0 q1 ... | k0 k1 ... | v0 v1 ...]

Attention-mask buffers some GPT-2 checkpoints carry are dropped. Baichuan's fused
`self_attn.W_pack` becomes `self_attn.qkv_proj`. Every other family passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from server.engine.models.config import ModelArchConfig

AS_IS, TRANSPOSED, PER_HEAD = "as_is", "transposed", "per_head"
_LAYER_TENSOR = r"\.(weight|bias)"
# architecture -> (top-level renames, layer part renames, layer prefix)
_FAMILIES = {
    "GPT2LMHeadModel": (
        {"wte.weight": "model.embed_tokens.weight", "wpe.weight": "model.embed_positions.weight",
         "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"},
        {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm",
         "attn.c_attn": "self_attn.qkv_proj", "attn.c_proj": "self_attn.o_proj",
         "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}, "h"),
    "MptForCausalLM": (
        {"wte.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight"},
        {"norm_1": "input_layernorm", "norm_2": "post_attention_layernorm",
         "attn.Wqkv": "self_attn.qkv_proj", "attn.out_proj": "self_attn.o_proj",
         "ffn.up_proj": "mlp.c_fc", "ffn.down_proj": "mlp.c_proj"}, "blocks"),
    "BloomForCausalLM": (
        {"word_embeddings.weight": "model.embed_tokens.weight",
         "word_embeddings_layernorm.weight": "model.embed_norm.weight",
         "word_embeddings_layernorm.bias": "model.embed_norm.bias",
         "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"},
        {"input_layernorm": "input_layernorm",
         "post_attention_layernorm": "post_attention_layernorm",
         "self_attention.query_key_value": "self_attn.qkv_proj",
         "self_attention.dense": "self_attn.o_proj", "mlp.dense_h_to_4h": "mlp.c_fc",
         "mlp.dense_4h_to_h": "mlp.c_proj"}, "h"),
}
_FAMILIES["GPTBigCodeForCausalLM"] = _FAMILIES["GPT2LMHeadModel"]
_GPT2_MASK_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def engine_name(arch: ModelArchConfig, name: str) -> tuple[str, str] | None:
    """(the engine's name for a stored tensor, its stored layout), or None for a tensor
    the engine does not use."""
    if arch.architecture == "BaichuanForCausalLM":  # Llama's names but for q|k|v
        return name.replace(".self_attn.W_pack.", ".self_attn.qkv_proj."), AS_IS
    family = _FAMILIES.get(arch.architecture)
    if family is None:
        return name, AS_IS
    top, parts, layer_prefix = family
    short = name.removeprefix("transformer.")
    if _GPT2_MASK_BUFFERS.fullmatch(short):
        return None
    if short in top:
        return top[short], AS_IS
    pattern = (rf"{layer_prefix}\.(\d+)\.({'|'.join(map(re.escape, parts))})" + _LAYER_TENSOR)
    match = re.fullmatch(pattern, short)
    if match is None:
        return name, AS_IS  # lm_head.weight, or unknown: the loader names it
    layer, part, kind = match.groups()
    engine = f"model.layers.{layer}.{parts[part]}.{kind}"
    if arch.architecture == "GPT2LMHeadModel" and kind == "weight" and not part.startswith("ln"):
        return engine, TRANSPOSED  # Conv1D
    if arch.architecture == "BloomForCausalLM" and part == "self_attention.query_key_value":
        return engine, PER_HEAD
    return engine, AS_IS


def to_engine_layout(arch: ModelArchConfig, tensor: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == TRANSPOSED:
        return tensor.t().contiguous()
    if layout == PER_HEAD:  # [H, 3, D, ...] -> [3, H, D, ...]
        rest = tensor.shape[1:]
        return tensor.reshape(arch.num_heads, 3, arch.head_dim, *rest).transpose(0, 1) \
            .reshape(tensor.shape).contiguous()
    return tensor


def engine_named(arch: ModelArchConfig, weights: Iterable[tuple[str, torch.Tensor]]
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's (name, tensor) pairs under the engine's names and layouts."""
    for name, tensor in weights:
        mapped = engine_name(arch, name)
        if mapped is not None:
            yield mapped[0], to_engine_layout(arch, tensor, mapped[1])
