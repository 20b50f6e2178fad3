"""Config keys of the families that name theirs their own way (GPT-2, MPT, BLOOM, Falcon,
Baichuan 13B), under the names the Llama family uses, with the ModelArchConfig features
only they have."""

from __future__ import annotations

from typing import Any

from server.engine.models.errors import UnsupportedModelError

# How a checkpoint stores a fused q|k|v weight (rows; biases alike), for H query heads,
# Hkv key/value heads and G = H / Hkv queries per group:
#   as_is     [q0 .. qH-1 | k0 .. | v0 ..]      as the engine holds it
#   per_head  [q0 k0 v0 | q1 k1 v1 | ...]       BLOOM, Falcon-RW
#   grouped   [q0 .. qG-1 k0 v0 | qG .. k1 v1 | ...]   Falcon's new decoder architecture
QKV_AS_IS, QKV_PER_HEAD, QKV_GROUPED = "as_is", "per_head", "grouped"

Translated = tuple[dict[str, Any], dict[str, Any]]  # (config.json under common keys, features)


def common_keys(architecture: str, hf: dict[str, Any]) -> Translated:
    """The config under the common keys, and the ModelArchConfig fields it implies that
    the common keys cannot say (the other families: as given, no features)."""
    translate = _TRANSLATORS.get(architecture)
    return (hf, {}) if translate is None else translate(hf)


def _gpt2(hf: dict[str, Any]) -> Translated:
    """GPT-2 and GPTBigCode: the MLP is n_inner wide, or 4 x n_embd; every projection has
    a bias; GPTBigCode's multi_query means one kv head."""
    hidden = int(hf["n_embd"])
    if hf.get("multi_query") is False:
        raise UnsupportedModelError("GPTBigCode without multi_query (its q|k|v interleaved "
                                    "head by head) is not supported")
    num_kv_heads = 1 if hf.get("multi_query") else hf["n_head"]
    return {**hf, "hidden_size": hidden, "num_attention_heads": hf["n_head"],
            "num_hidden_layers": hf["n_layer"], "max_position_embeddings": hf["n_positions"],
            "intermediate_size": hf.get("n_inner") or 4 * hidden,
            "norm_epsilon": hf.get("layer_norm_epsilon", 1e-5),
            "hidden_act": hf.get("activation_function", "gelu_new"), "use_bias": True,
            "num_key_value_heads": num_kv_heads, "head_dim": hidden // int(hf["n_head"]),
            "tie_word_embeddings": hf.get("tie_word_embeddings", True)}, {}


def _mpt(hf: dict[str, Any]) -> Translated:
    """MPT: only its ALiBi variant; no_bias takes the biases off norms and projections."""
    attn = hf.get("attn_config") or {}
    if not attn.get("alibi", False) or attn.get("qk_ln") or attn.get("clip_qkv") \
            or attn.get("softmax_scale"):
        raise UnsupportedModelError("MPT is supported with ALiBi and without qk_ln, "
                                    "clip_qkv or softmax_scale")
    hidden = int(hf["d_model"])
    biased = not hf.get("no_bias", False)
    return {**hf, "hidden_size": hidden, "num_attention_heads": hf["n_heads"],
            "num_key_value_heads": hf["n_heads"], "num_hidden_layers": hf["n_layers"],
            "max_position_embeddings": hf["max_seq_len"],
            # transformers' MPT is 4 x d_model wide whatever expansion_ratio says (as the
            # released MPT checkpoints are)
            "intermediate_size": 4 * hidden,
            "norm_epsilon": hf.get("layer_norm_epsilon", 1e-5), "hidden_act": "gelu",
            "use_bias": biased, "tie_word_embeddings": hf.get("tie_word_embeddings", True)}, {
        "alibi_bias_max": float(attn.get("alibi_bias_max", 8)),
        "layer_norm_biases": biased, "mlp_biases": biased}


def _bloom(hf: dict[str, Any]) -> Translated:
    """BLOOM has no position limit of its own (ALiBi): seq_length when the config gives
    one, else 2048, its training length."""
    if hf.get("apply_residual_connection_post_layernorm"):
        raise UnsupportedModelError("BLOOM with apply_residual_connection_post_layernorm is "
                                    "not supported")
    hidden = int(hf["hidden_size"])
    return {**hf, "num_attention_heads": hf["n_head"], "num_key_value_heads": hf["n_head"],
            "num_hidden_layers": hf["n_layer"],
            "max_position_embeddings": hf.get("seq_length") or 2048,
            "intermediate_size": 4 * hidden, "norm_epsilon": hf.get("layer_norm_epsilon", 1e-5),
            "hidden_act": "gelu_pytorch_tanh", "use_bias": True,
            "tie_word_embeddings": hf.get("tie_word_embeddings", True)}, {
        "alibi_bias_max": 8.0, "embedding_norm": True, "stored_qkv_layout": QKV_PER_HEAD}


def _falcon(hf: dict[str, Any]) -> Translated:
    """Falcon's three decoders: 7B (parallel attention and MLP under one LayerNorm,
    multi-query), 40B/180B (the new decoder architecture: grouped kv heads, a LayerNorm
    each for attention and MLP) and RW (sequential, ALiBi, q|k|v head by head). LayerNorms
    always carry biases; `bias` gives the projections theirs."""
    new_decoder = bool(hf.get("new_decoder_architecture", False))
    parallel = bool(hf.get("parallel_attn", True))
    if new_decoder and not parallel:
        raise UnsupportedModelError("Falcon's new decoder architecture without parallel_attn "
                                    "is not supported")
    hidden = int(hf.get("hidden_size") or hf["n_embed"])
    num_heads = int(hf.get("num_attention_heads") or hf["n_head"])
    if new_decoder:
        num_kv_heads, layout = int(hf.get("num_kv_heads") or num_heads), QKV_GROUPED
    elif hf.get("multi_query", True):
        num_kv_heads, layout = 1, QKV_AS_IS
    else:
        num_kv_heads, layout = num_heads, QKV_PER_HEAD
    head_dim = hidden // num_heads
    bias = bool(hf.get("bias", False))
    features: dict[str, Any] = {
        "parallel_attention": parallel, "mlp_biases": bias, "stored_qkv_layout": layout,
        "parallel_mlp_norm": new_decoder and (hf.get("num_ln_in_parallel_attn") or 2) == 2}
    if hf.get("alibi"):  # Falcon divides its ALiBi biases by sqrt(head_dim)
        features.update(alibi_bias_max=8.0, alibi_slope_scale=head_dim ** -0.5)
    return {**hf, "hidden_size": hidden, "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads, "head_dim": head_dim,
            "num_hidden_layers": hf.get("num_hidden_layers") or hf["n_layer"],
            "intermediate_size": hf.get("ffn_hidden_size") or 4 * hidden,
            "norm_epsilon": hf.get("layer_norm_epsilon", 1e-5),
            "hidden_act": hf.get("activation", "gelu"), "use_bias": bias,
            "max_position_embeddings": hf.get("max_position_embeddings", 2048),
            "tie_word_embeddings": hf.get("tie_word_embeddings", True)}, features


def _baichuan(hf: dict[str, Any]) -> Translated:
    """Baichuan 2: the 7B rotates (Llama's config keys); the 13B has no
    max_position_embeddings, only model_max_length, and ALiBi (MPT's slopes, unscaled)."""
    if hf.get("max_position_embeddings"):
        return hf, {}
    return {**hf, "max_position_embeddings": int(hf.get("model_max_length") or 4096)}, {
        "alibi_bias_max": 8.0}


_TRANSLATORS = {"GPT2LMHeadModel": _gpt2, "GPTBigCodeForCausalLM": _gpt2,
                "MptForCausalLM": _mpt, "BloomForCausalLM": _bloom,
                "FalconForCausalLM": _falcon, "BaichuanForCausalLM": _baichuan}
