"""The Hugging Face tensor names and shapes a Llama-family checkpoint holds, from its arch config.

One table serves three readers: the dummy-weight generator (what to make), the safetensors
loader (what must be there, and what to leave out) and the tests.
"""

from __future__ import annotations

from server.engine.models.config import ModelArchConfig


def layer_weight_shapes(arch: ModelArchConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """Tensors of decoder layer `layer`, in the order the engine loads them."""
    prefix = f"model.layers.{layer}"
    q_size = arch.num_heads * arch.head_dim
    kv_size = arch.num_kv_heads * arch.head_dim
    hidden, inter = arch.hidden_size, arch.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}.input_layernorm.weight": (hidden,)}
    if arch.layer_norm and arch.layer_norm_biases:
        shapes[f"{prefix}.input_layernorm.bias"] = (hidden,)
    if arch.fused_qkv:
        shapes[f"{prefix}.self_attn.qkv_proj.weight"] = (q_size + 2 * kv_size, arch.hidden_size)
    else:
        shapes.update({
            f"{prefix}.self_attn.q_proj.weight": (q_size, arch.hidden_size),
            f"{prefix}.self_attn.k_proj.weight": (kv_size, arch.hidden_size),
            f"{prefix}.self_attn.v_proj.weight": (kv_size, arch.hidden_size),
        })
    if arch.attention_bias and arch.fused_qkv:
        shapes[f"{prefix}.self_attn.qkv_proj.bias"] = (q_size + 2 * kv_size,)
    elif arch.attention_bias:
        shapes[f"{prefix}.self_attn.q_proj.bias"] = (q_size,)
        shapes[f"{prefix}.self_attn.k_proj.bias"] = (kv_size,)
        shapes[f"{prefix}.self_attn.v_proj.bias"] = (kv_size,)
    if arch.qk_norm:
        shapes[f"{prefix}.self_attn.q_norm.weight"] = (arch.head_dim,)
        shapes[f"{prefix}.self_attn.k_norm.weight"] = (arch.head_dim,)
    shapes[f"{prefix}.self_attn.o_proj.weight"] = (hidden, q_size)
    if arch.o_proj_bias:
        shapes[f"{prefix}.self_attn.o_proj.bias"] = (hidden,)
    if not arch.parallel_attention or arch.parallel_mlp_norm:  # Falcon 7B: one shared norm
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
        if arch.layer_norm and arch.layer_norm_biases:
            shapes[f"{prefix}.post_attention_layernorm.bias"] = (hidden,)
    if arch.sandwich_norms:  # Gemma 2: norms before and after the MLP as well
        shapes[f"{prefix}.pre_feedforward_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_feedforward_layernorm.weight"] = (hidden,)
    mlp = f"{prefix}.mlp"
    if arch.layer_norm:  # Starcoder2, GPT-2, MPT: ungated MLP, biases but for MPT
        shapes.update({f"{mlp}.c_fc.weight": (inter, hidden),
                       f"{mlp}.c_proj.weight": (hidden, inter)})
        if arch.mlp_biases:
            shapes.update({f"{mlp}.c_fc.bias": (inter,), f"{mlp}.c_proj.bias": (hidden,)})
        return shapes
    if arch.fused_gate_up:
        shapes[f"{mlp}.gate_up_proj.weight"] = (2 * inter, hidden)
    else:
        shapes[f"{mlp}.gate_proj.weight"] = (inter, hidden)
        shapes[f"{mlp}.up_proj.weight"] = (inter, hidden)
    shapes[f"{mlp}.down_proj.weight"] = (hidden, inter)
    return shapes


def weight_shapes(arch: ModelArchConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the engine needs, embeddings first and lm_head last (absent when tied)."""
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (arch.vocab_size, arch.hidden_size),
    }
    if arch.learned_positions:
        shapes["model.embed_positions.weight"] = (arch.max_position_embeddings,
                                                  arch.hidden_size)
    if arch.embedding_norm:
        shapes["model.embed_norm.weight"] = (arch.hidden_size,)
        shapes["model.embed_norm.bias"] = (arch.hidden_size,)
    for layer in range(arch.num_layers):
        shapes.update(layer_weight_shapes(arch, layer))
    shapes["model.norm.weight"] = (arch.hidden_size,)
    if arch.layer_norm and arch.layer_norm_biases:
        shapes["model.norm.bias"] = (arch.hidden_size,)
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, arch.hidden_size)
    return shapes


def is_norm_weight(name: str) -> bool:
    return name.endswith("norm.weight")


def num_weight_bytes(arch: ModelArchConfig, *, bytes_per_element: int) -> int:
    total = 0
    for shape in weight_shapes(arch).values():
        count = 1
        for dim in shape:
            count *= dim
        total += count
    return total * bytes_per_element
