"""Checkpoint tensors of families that name them their own way, renamed to the engine's.

GPT-2, GPTBigCode, MPT, BLOOM and Falcon checkpoints (`transformer.h.N.attn.c_attn.weight`,
with or without the `transformer.` prefix) get the names the other families use
(`model.layers.N.self_attn.qkv_proj.weight`), and their tensors the engine's layout:

    as_is         stored as the engine holds it
    transposed    GPT-2's Conv1D weights, stored [in, out]: the engine's [out, in] is .t()
    per_head      a fused q|k|v stored head by head, [q0 k0 v0 | q1 k1 v1 | ...] (BLOOM,
                  Falcon-RW): the engine's is [q0 q1 ... | k0 k1 ... | v0 v1 ...]
    grouped       Falcon's new decoder: each kv group's queries, then its key and value
    rotary_pairs  GLM's q and k rows, reordered within each head so that the engine's
                  half-split rotation turns GLM's interleaved pairs (models/rotary.py)

Attention-mask buffers some GPT-2 checkpoints carry are dropped. Baichuan's fused
`self_attn.W_pack` becomes `self_attn.qkv_proj`; GLM 4's four norms take Gemma's names
for the same places. Every other family passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from server.engine.models.config import ModelArchConfig
from server.engine.models.family_keys import QKV_AS_IS, QKV_GROUPED, QKV_PER_HEAD
from server.engine.models.rotary import interleaved_pairs_order

AS_IS, TRANSPOSED, PER_HEAD, GROUPED = QKV_AS_IS, "transposed", QKV_PER_HEAD, QKV_GROUPED
ROTARY_PAIRS = "rotary_pairs"
_LAYER_TENSOR = r"\.(weight|bias)"
_QKV = "self_attn.qkv_proj"
# architecture -> (top-level renames, layer part renames, layer prefix)
_FAMILIES = {
    "GPT2LMHeadModel": (
        {"wte.weight": "model.embed_tokens.weight", "wpe.weight": "model.embed_positions.weight",
         "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"},
        {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm",
         "attn.c_attn": _QKV, "attn.c_proj": "self_attn.o_proj",
         "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}, "h"),
    "MptForCausalLM": (
        {"wte.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight"},
        {"norm_1": "input_layernorm", "norm_2": "post_attention_layernorm",
         "attn.Wqkv": _QKV, "attn.out_proj": "self_attn.o_proj",
         "ffn.up_proj": "mlp.c_fc", "ffn.down_proj": "mlp.c_proj"}, "blocks"),
    "BloomForCausalLM": (
        {"word_embeddings.weight": "model.embed_tokens.weight",
         "word_embeddings_layernorm.weight": "model.embed_norm.weight",
         "word_embeddings_layernorm.bias": "model.embed_norm.bias",
         "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"},
        {"input_layernorm": "input_layernorm",
         "post_attention_layernorm": "post_attention_layernorm",
         "self_attention.query_key_value": _QKV,
         "self_attention.dense": "self_attn.o_proj", "mlp.dense_h_to_4h": "mlp.c_fc",
         "mlp.dense_4h_to_h": "mlp.c_proj"}, "h"),
}
_FAMILIES["GPTBigCodeForCausalLM"] = _FAMILIES["GPT2LMHeadModel"]
# Falcon: BLOOM's names; the 40B's two parallel norms take the sequential norms' places
_FAMILIES["FalconForCausalLM"] = (
    {name: engine for name, engine in _FAMILIES["BloomForCausalLM"][0].items()
     if "embeddings_layernorm" not in name},
    {**_FAMILIES["BloomForCausalLM"][1], "ln_attn": "input_layernorm",
     "ln_mlp": "post_attention_layernorm"}, "h")
_GPT2_MASK_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_GLM4_NORMS = {"post_self_attn_layernorm": "post_attention_layernorm",
               "post_attention_layernorm": "pre_feedforward_layernorm",
               "post_mlp_layernorm": "post_feedforward_layernorm"}
_GLM_NORM = re.compile(rf"(model\.layers\.\d+)\.({'|'.join(_GLM4_NORMS)})\.weight")
_GLM_ROTATED = re.compile(r"model\.layers\.\d+\.self_attn\.[qk]_proj\.(weight|bias)")


def engine_name(arch: ModelArchConfig, name: str) -> tuple[str, str] | None:
    """(the engine's name for a stored tensor, its stored layout), or None for a tensor
    the engine does not use."""
    if arch.architecture == "BaichuanForCausalLM":  # Llama's names but for q|k|v
        return name.replace(".self_attn.W_pack.", ".self_attn.qkv_proj."), AS_IS
    if arch.rotary_dim is not None:  # GLM
        return _glm_name(arch, name)
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
    if parts[part] == _QKV:
        return engine, arch.stored_qkv_layout
    return engine, AS_IS


def _glm_name(arch: ModelArchConfig, name: str) -> tuple[str, str]:
    if _GLM_ROTATED.fullmatch(name):
        return name, ROTARY_PAIRS
    match = _GLM_NORM.fullmatch(name)
    if match is not None and arch.sandwich_norms:
        return f"{match[1]}.{_GLM4_NORMS[match[2]]}.weight", AS_IS
    return name, AS_IS


def to_engine_layout(arch: ModelArchConfig, tensor: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == TRANSPOSED:
        return tensor.t().contiguous()
    rest = tensor.shape[1:]
    if layout == PER_HEAD:  # [H, 3, D, ...] -> [3, H, D, ...]
        return tensor.reshape(arch.num_heads, 3, arch.head_dim, *rest).transpose(0, 1) \
            .reshape(tensor.shape).contiguous()
    if layout == GROUPED:  # [Hkv, G + 2, D, ...] -> queries of every group, keys, values
        group = arch.num_heads // arch.num_kv_heads
        grouped = tensor.reshape(arch.num_kv_heads, group + 2, arch.head_dim, *rest)
        return torch.cat((grouped[:, :group].reshape(-1, *rest),
                          grouped[:, group].reshape(-1, *rest),
                          grouped[:, group + 1].reshape(-1, *rest))).contiguous()
    if layout == ROTARY_PAIRS:  # rows of each head permuted
        order = interleaved_pairs_order(head_dim=arch.head_dim, rotary_dim=arch.rotary_dim)
        by_head = tensor.reshape(-1, arch.head_dim, *rest)
        return by_head[:, order.to(tensor.device)].reshape(tensor.shape).contiguous()
    return tensor


def engine_named(arch: ModelArchConfig, weights: Iterable[tuple[str, torch.Tensor]]
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's (name, tensor) pairs under the engine's names and layouts."""
    for name, tensor in weights:
        mapped = engine_name(arch, name)
        if mapped is not None:
            yield mapped[0], to_engine_layout(arch, tensor, mapped[1])
