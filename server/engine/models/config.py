"""The architecture facts the engine needs, read from a Hugging Face config.json dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM", "Phi3ForCausalLM", "Starcoder2ForCausalLM",
                           "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GPT2LMHeadModel",
                           "GPTBigCodeForCausalLM", "MptForCausalLM", "BloomForCausalLM",
                           "BaichuanForCausalLM")
# MPT: ALiBi instead of positions, LayerNorm and linear layers without biases
MPT_ARCHITECTURES = ("MptForCausalLM",)
# Baichuan 2 (its own code, not transformers'): Llama with q|k|v as one W_pack and a
# normalised lm_head; the rotary 7B only (13B uses ALiBi)
BAICHUAN_ARCHITECTURES = ("BaichuanForCausalLM",)
# BLOOM: ALiBi, a LayerNorm on the embeddings, q|k|v stored head by head, biases throughout
BLOOM_ARCHITECTURES = ("BloomForCausalLM",)
# GPT-2's config keys and checkpoint names (GPTBigCode: Starcoder 1, multi-query)
GPT2_STYLE_ARCHITECTURES = ("GPT2LMHeadModel", "GPTBigCodeForCausalLM")
# (1 + w) norms around both halves of the block, scaled embeddings, soft-capped logits
GEMMA_ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
QK_NORM_ARCHITECTURES = ("Qwen3ForCausalLM", "Gemma3ForCausalLM")
# LayerNorm with biases, a plain GELU MLP (c_fc, c_proj) and biases on every projection
LAYER_NORM_ARCHITECTURES = ("Starcoder2ForCausalLM", *GPT2_STYLE_ARCHITECTURES,
                            *MPT_ARCHITECTURES, *BLOOM_ARCHITECTURES)
# hidden_act -> the activation the engine computes (tanh-approximated GELU is torch's "tanh")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu": "gelu"}
# Checkpoints that store q|k|v as one qkv_proj and gate|up as one gate_up_proj (Phi-3)
FUSED_PROJECTION_ARCHITECTURES = ("Phi3ForCausalLM", *GPT2_STYLE_ARCHITECTURES,
                                  *MPT_ARCHITECTURES, *BLOOM_ARCHITECTURES)
# Learned absolute position embeddings added to the token embeddings; no rotary (GPT-2)
LEARNED_POSITION_ARCHITECTURES = GPT2_STYLE_ARCHITECTURES


class UnsupportedModelError(ValueError):
    """The model's architecture or a feature of its config is not implemented."""


@dataclass(frozen=True)
class ModelArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, Any], ...] | None  # sorted items of the HF dict
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool  # each head's q and k are RMS-normed before rotary (Qwen3)
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    # the checkpoint stores qkv_proj (Phi-3, GPT-2, MPT, BLOOM, Baichuan's W_pack) or
    # gate_up_proj (Phi-3) already fused
    fused_qkv: bool = False
    fused_gate_up: bool = False
    normalized_lm_head: bool = False  # Baichuan 2: lm_head rows scaled to unit length
    # Starcoder2's kind of block: LayerNorm (weight and bias) instead of RMSNorm, an
    # ungated MLP (up, activation, down, both biased) and a bias on o_proj too
    layer_norm: bool = False
    activation: str = "silu"  # "silu", "gelu_tanh" or "gelu"
    # Gemma 2: RMSNorm scales by (1 + w) (the offset is added to the weights as they load);
    # norms after attention and after the MLP too ("sandwich"); embeddings times
    # sqrt(hidden); queries scaled by query_pre_attn_scalar ** -0.5; attention scores and
    # final logits soft-capped as cap * tanh(x / cap)
    norm_weight_offset: float = 0.0
    sandwich_norms: bool = False
    embedding_multiplier: float | None = None
    query_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    # Gemma 3: the sliding-window layers rotate with their own base frequency (no scaling)
    local_rope_theta: float | None = None
    sliding_layers: tuple[bool, ...] = ()  # by layer: a "sliding_attention" layer
    learned_positions: bool = False  # GPT-2: model.embed_positions, and no rotary
    # LayerNorm families: whether norms and MLP projections carry biases (MPT's no_bias)
    layer_norm_biases: bool = True
    # ALiBi (MPT): no rotary; head h adds slope_h * (key position - query position) to its
    # scores, slope_h = 2 ** -(alibi_bias_max * (h + 1) / H) (interleaved when H is not a
    # power of two)
    alibi_bias_max: float | None = None
    embedding_norm: bool = False  # BLOOM: LayerNorm (with bias) of the token embeddings
    # keys each query sees, when the checkpoint limits attention to a window (Mistral v0.1:
    # 4096); the kernels attend to the whole context, so the engine keeps contexts within it
    sliding_window: int | None = None

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelArchConfig":
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else "<none given>"
        if arch in GPT2_STYLE_ARCHITECTURES:
            hf = _gpt2_as_common_keys(hf)
        if arch in MPT_ARCHITECTURES:
            hf = _mpt_as_common_keys(hf)
        if arch in BLOOM_ARCHITECTURES:
            hf = _bloom_as_common_keys(hf)
        if arch in BAICHUAN_ARCHITECTURES and not hf.get("max_position_embeddings"):
            raise UnsupportedModelError("Baichuan 2 13B (ALiBi, no max_position_embeddings) is "
                                        "not supported yet; the rotary 7B is")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"model architecture {arch!r} is not supported; inflightd runs "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}")
        num_heads = int(hf["num_attention_heads"])
        num_kv_heads = int(hf.get("num_key_value_heads") or num_heads)
        if num_heads % num_kv_heads:
            raise UnsupportedModelError(
                f"num_attention_heads ({num_heads}) must be a multiple of "
                f"num_key_value_heads ({num_kv_heads})")
        head_dim = int(hf.get("head_dim") or hf["hidden_size"] // num_heads)
        partial_rotary = float(hf.get("partial_rotary_factor") or 1.0)
        if partial_rotary != 1.0:
            raise UnsupportedModelError(
                f"partial rotary embeddings (partial_rotary_factor {partial_rotary}) are not "
                f"supported yet; inflightd rotates every dimension of each head")
        rope_scaling = _rope_scaling(hf)
        rope_theta = float(hf.get("rope_theta") or _global_rope(hf).get("rope_theta")
                           or 10000.0)
        activation = ACTIVATIONS.get(hf.get("hidden_act") or hf.get("hidden_activation")
                                     or "silu")
        if activation is None:
            raise UnsupportedModelError(f"activation {hf.get('hidden_act')!r} is not supported; "
                                        f"inflightd computes {', '.join(ACTIVATIONS)}")
        layer_norm = arch in LAYER_NORM_ARCHITECTURES
        gemma = arch in GEMMA_ARCHITECTURES
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=arch,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            # each family's own key (a config may carry the other one unused)
            rms_norm_eps=float(hf.get("norm_epsilon" if layer_norm else "rms_norm_eps")
                               or 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=(arch == "Qwen2ForCausalLM") or bool(hf.get("attention_bias", False))
            or (layer_norm and bool(hf.get("use_bias", True))),
            qk_norm=arch in QK_NORM_ARCHITECTURES,
            eos_token_ids=eos_ids,
            bos_token_id=hf.get("bos_token_id"),
            sliding_window=_sliding_window(hf),
            fused_qkv=arch in FUSED_PROJECTION_ARCHITECTURES or arch in BAICHUAN_ARCHITECTURES,
            fused_gate_up=arch == "Phi3ForCausalLM",
            normalized_lm_head=arch in BAICHUAN_ARCHITECTURES,
            layer_norm=layer_norm,
            activation=activation,
            **(_gemma_features(hf) if gemma else {}),
            learned_positions=arch in LEARNED_POSITION_ARCHITECTURES,
            layer_norm_biases=not hf.get("no_bias", False),
            alibi_bias_max=hf.get("alibi_bias_max"),
            embedding_norm=arch in BLOOM_ARCHITECTURES,
        )

    @property
    def rotary(self) -> bool:
        """Positions enter as rotary embeddings (not learned, as GPT-2's, nor ALiBi)."""
        return not self.learned_positions and self.alibi_bias_max is None

    @property
    def o_proj_bias(self) -> bool:
        """Llama's attention_bias (and Starcoder2's use_bias) biases o_proj too; Qwen2's
        only q, k and v."""
        return self.attention_bias and self.architecture != "Qwen2ForCausalLM"

    @property
    def max_exact_context(self) -> int:
        """The longest context the engine computes as the checkpoint defines it: the
        position limit, or the sliding window when there is one (windowed attention is not
        implemented yet, so longer contexts would attend to keys the model never sees)."""
        if self.sliding_window is None:
            return self.max_position_embeddings
        return min(self.max_position_embeddings, self.sliding_window)

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None


def _gpt2_as_common_keys(hf: dict[str, Any]) -> dict[str, Any]:
    """GPT-2's (and GPTBigCode's) config keys under the names the other families use (the
    MLP is n_inner wide, or 4 x n_embd; every projection has a bias; GPTBigCode's
    multi_query means one kv head)."""
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
            "tie_word_embeddings": hf.get("tie_word_embeddings", True)}


def _mpt_as_common_keys(hf: dict[str, Any]) -> dict[str, Any]:
    """MPT's config keys under the common names; only its ALiBi variant is supported."""
    attn = hf.get("attn_config") or {}
    if not attn.get("alibi", False) or attn.get("qk_ln") or attn.get("clip_qkv") \
            or attn.get("softmax_scale"):
        raise UnsupportedModelError("MPT is supported with ALiBi and without qk_ln, "
                                    "clip_qkv or softmax_scale")
    hidden = int(hf["d_model"])
    return {**hf, "hidden_size": hidden, "num_attention_heads": hf["n_heads"],
            "num_key_value_heads": hf["n_heads"], "num_hidden_layers": hf["n_layers"],
            "max_position_embeddings": hf["max_seq_len"],
            # transformers' MPT is 4 x d_model wide whatever expansion_ratio says (as the
            # released MPT checkpoints are)
            "intermediate_size": 4 * hidden,
            "norm_epsilon": hf.get("layer_norm_epsilon", 1e-5), "hidden_act": "gelu",
            "use_bias": not hf.get("no_bias", False),
            "alibi_bias_max": float(attn.get("alibi_bias_max", 8)),
            "tie_word_embeddings": hf.get("tie_word_embeddings", True)}


def _bloom_as_common_keys(hf: dict[str, Any]) -> dict[str, Any]:
    """BLOOM's config keys under the common names. It has no position limit of its own
    (ALiBi): seq_length when the config gives one, else 2048, its training length."""
    if hf.get("apply_residual_connection_post_layernorm"):
        raise UnsupportedModelError("BLOOM with apply_residual_connection_post_layernorm is "
                                    "not supported")
    hidden = int(hf["hidden_size"])
    return {**hf, "num_attention_heads": hf["n_head"], "num_key_value_heads": hf["n_head"],
            "num_hidden_layers": hf["n_layer"],
            "max_position_embeddings": hf.get("seq_length") or 2048,
            "intermediate_size": 4 * hidden, "norm_epsilon": hf.get("layer_norm_epsilon", 1e-5),
            "hidden_act": "gelu_pytorch_tanh", "use_bias": True, "alibi_bias_max": 8.0,
            "tie_word_embeddings": hf.get("tie_word_embeddings", True)}


def _global_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """The rope settings of the full-attention layers: transformers 5 keeps one dict per
    layer type under rope_parameters (Gemma 3), else one for all layers."""
    params = hf.get("rope_parameters") or {}
    return params.get("full_attention", params)


def _layer_types_from_pattern(hf: dict[str, Any]) -> tuple[str, ...]:
    """Older Gemma 3 configs: every sliding_window_pattern-th layer is global."""
    pattern = hf.get("sliding_window_pattern")
    if not pattern:
        return ()
    return tuple("full_attention" if (index + 1) % int(pattern) == 0 else "sliding_attention"
                 for index in range(int(hf["num_hidden_layers"])))


def _local_rope_theta(hf: dict[str, Any]) -> float | None:
    local = (hf.get("rope_parameters") or {}).get("sliding_attention") or {}
    theta = hf.get("rope_local_base_freq") or local.get("rope_theta")
    return float(theta) if theta else None


def _gemma_features(hf: dict[str, Any]) -> dict[str, Any]:
    scalar = hf.get("query_pre_attn_scalar")
    layer_types = hf.get("layer_types") or _layer_types_from_pattern(hf)
    return {"local_rope_theta": _local_rope_theta(hf),
            "sliding_layers": tuple(kind == "sliding_attention" for kind in layer_types),
            "norm_weight_offset": 1.0, "sandwich_norms": True,
            "embedding_multiplier": float(hf["hidden_size"]) ** 0.5,
            "query_scale": float(scalar) ** -0.5 if scalar else None,
            "attn_softcap": hf.get("attn_logit_softcapping"),
            "final_softcap": hf.get("final_logit_softcapping")}


def _sliding_window(hf: dict[str, Any]) -> int | None:
    """Qwen2 and Qwen3 carry a window they only use with use_sliding_window."""
    window = hf.get("sliding_window")
    if not window or hf.get("use_sliding_window") is False:
        return None
    return int(window)


def _rope_scaling(hf: dict[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    # transformers 5 moved rope settings into "rope_parameters"; older configs use "rope_scaling".
    scaling = hf.get("rope_scaling") or _global_rope(hf)
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return None
    if kind not in ("llama3", "linear"):
        raise UnsupportedModelError(f"rope scaling type {kind!r} is not supported "
                                    f"(llama3 and linear are)")
    return tuple(sorted((k, v) for k, v in scaling.items() if not isinstance(v, (dict, list))))
