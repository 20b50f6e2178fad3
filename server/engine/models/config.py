"""The architecture facts the engine needs, read from a Hugging Face config.json dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.engine.models.errors import UnsupportedModelError
from server.engine.models.family_keys import QKV_AS_IS, common_keys
from server.engine.models.windows import sliding_layers, sliding_window

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM", "Phi3ForCausalLM", "Starcoder2ForCausalLM",
                           "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GPT2LMHeadModel",
                           "GPTBigCodeForCausalLM", "MptForCausalLM", "BloomForCausalLM",
                           "BaichuanForCausalLM", "FalconForCausalLM", "GlmForCausalLM",
                           "Glm4ForCausalLM")
# Baichuan 2 (its own code, not transformers'): Llama with q|k|v as one W_pack and a
# normalised lm_head; rotary (7B) or ALiBi (13B)
BAICHUAN_ARCHITECTURES = ("BaichuanForCausalLM",)
# GPT-2's config keys and checkpoint names (GPTBigCode: Starcoder 1, multi-query)
GPT2_STYLE_ARCHITECTURES = ("GPT2LMHeadModel", "GPTBigCodeForCausalLM")
# (1 + w) norms around both halves of the block, scaled embeddings, soft-capped logits
GEMMA_ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
QK_NORM_ARCHITECTURES = ("Qwen3ForCausalLM", "Gemma3ForCausalLM")
# GLM: q|k|v biased (o_proj not), half of each head rotated, its pairs interleaved; GLM 4
# adds norms after attention and after the MLP
GLM_ARCHITECTURES = ("GlmForCausalLM", "Glm4ForCausalLM")
# LayerNorm (with biases unless MPT's no_bias), an ungated GELU MLP (c_fc, c_proj)
LAYER_NORM_ARCHITECTURES = ("Starcoder2ForCausalLM", *GPT2_STYLE_ARCHITECTURES,
                            "MptForCausalLM", "BloomForCausalLM", "FalconForCausalLM")
# hidden_act -> the activation the engine computes (tanh-approximated GELU is torch's "tanh")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu": "gelu"}
# Checkpoints that store q|k|v as one qkv_proj (Phi-3, Baichuan's W_pack, the LayerNorm
# families but Starcoder2) and gate|up as one gate_up_proj (Phi-3, GLM)
FUSED_QKV_ARCHITECTURES = ("Phi3ForCausalLM", "BaichuanForCausalLM", *GPT2_STYLE_ARCHITECTURES,
                           "MptForCausalLM", "BloomForCausalLM", "FalconForCausalLM")
FUSED_GATE_UP_ARCHITECTURES = ("Phi3ForCausalLM", *GLM_ARCHITECTURES)
# Learned absolute position embeddings added to the token embeddings; no rotary (GPT-2)
LEARNED_POSITION_ARCHITECTURES = GPT2_STYLE_ARCHITECTURES


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
    # by layer: a "sliding_attention" layer, attending within sliding_window (() if none)
    sliding_layers: tuple[bool, ...] = ()
    learned_positions: bool = False  # GPT-2: model.embed_positions, and no rotary
    # LayerNorm families: whether norms and MLP projections carry biases (MPT's no_bias)
    layer_norm_biases: bool = True
    # ALiBi (MPT): no rotary; head h adds slope_h * (key position - query position) to its
    # scores, slope_h = 2 ** -(alibi_bias_max * (h + 1) / H) (interleaved when H is not a
    # power of two)
    alibi_bias_max: float | None = None
    alibi_slope_scale: float = 1.0  # Falcon divides its biases by sqrt(head_dim)
    embedding_norm: bool = False  # BLOOM: LayerNorm (with bias) of the token embeddings
    mlp_biases: bool = True  # LayerNorm families: c_fc and c_proj carry biases
    # how the checkpoint orders a fused q|k|v (models/family_keys.py draws the layouts)
    stored_qkv_layout: str = QKV_AS_IS
    # Falcon: attention and MLP both read the block's input, and their outputs are added to
    # the residual together; the MLP normalises it with its own LayerNorm (40B) or shares
    # the attention's (7B)
    parallel_attention: bool = False
    parallel_mlp_norm: bool = False
    # GLM: only the first rotary_dim of each head's dims rotate, as interleaved pairs
    # (0 1)(2 3)..; the weights are permuted as they load so the engine's half-split
    # rotation does the same (models/rotary.py)
    rotary_dim: int | None = None
    # keys each query of a sliding layer sees (Mistral v0.1: 4096; models/windows.py); our
    # GPU kernels attend to the whole context, so on them contexts stay within it
    sliding_window: int | None = None

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelArchConfig":
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else "<none given>"
        hf, features = common_keys(arch, hf)
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
        activation = ACTIVATIONS.get(hf.get("hidden_act") or hf.get("hidden_activation")
                                     or "silu")
        if activation is None:
            raise UnsupportedModelError(f"activation {hf.get('hidden_act')!r} is not supported; "
                                        f"inflightd computes {', '.join(ACTIVATIONS)}")
        layer_norm = arch in LAYER_NORM_ARCHITECTURES
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        fields: dict[str, Any] = dict(
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
            rope_theta=float(hf.get("rope_theta") or _global_rope(hf).get("rope_theta")
                             or 10000.0),
            rope_scaling=_rope_scaling(hf),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=(arch == "Qwen2ForCausalLM") or bool(hf.get("attention_bias", False))
            or (layer_norm and bool(hf.get("use_bias", True))),
            qk_norm=arch in QK_NORM_ARCHITECTURES,
            eos_token_ids=eos_ids,
            bos_token_id=hf.get("bos_token_id"),
            sliding_window=sliding_window(hf),
            sliding_layers=sliding_layers(arch, hf),
            fused_qkv=arch in FUSED_QKV_ARCHITECTURES,
            fused_gate_up=arch in FUSED_GATE_UP_ARCHITECTURES,
            normalized_lm_head=arch in BAICHUAN_ARCHITECTURES,
            layer_norm=layer_norm,
            activation=activation,
            learned_positions=arch in LEARNED_POSITION_ARCHITECTURES,
            rotary_dim=_rotary_dim(hf, head_dim=head_dim, glm=arch in GLM_ARCHITECTURES),
            sandwich_norms=arch == "Glm4ForCausalLM",
        )
        if arch in GEMMA_ARCHITECTURES:
            fields.update(_gemma_features(hf))
        fields.update(features)
        return cls(**fields)

    @property
    def rotary(self) -> bool:
        """Positions enter as rotary embeddings (not learned, as GPT-2's, nor ALiBi)."""
        return not self.learned_positions and self.alibi_bias_max is None

    @property
    def o_proj_bias(self) -> bool:
        """Llama's attention_bias (and Starcoder2's use_bias) biases o_proj too; Qwen2's and
        GLM's only q, k and v."""
        return self.attention_bias and self.architecture not in ("Qwen2ForCausalLM",
                                                                 *GLM_ARCHITECTURES)

    @property
    def layer_windows(self) -> tuple[int | None, ...]:
        """By layer, the sliding window it attends within, or None for the whole context."""
        sliding = self.sliding_layers or (False,) * self.num_layers
        return tuple(self.sliding_window if is_sliding else None for is_sliding in sliding)

    @property
    def kv_window(self) -> int | None:
        """The window, when every layer slides: keys before it are read by no layer, so
        their KV blocks can be freed (Gemma's global layers keep every block)."""
        windows = set(self.layer_windows)
        return windows.pop() if len(windows) == 1 else None

    @property
    def long_rope_threshold(self) -> int | None:
        """LongRoPE (Phi-3 long-context): a request longer than this many tokens rotates
        every position with the long factors, a shorter one with the short factors, as
        transformers does (recomputing the cache when a sequence grows past it)."""
        scaling = self.rope_scaling_dict or {}
        if scaling.get("rope_type") != "longrope":
            return None
        return int(scaling["original_max_position_embeddings"])

    @property
    def rope_table_rows(self) -> int:
        """How far a request on the long table reads past its position (the short table's
        height) when the model has two rotary tables (LongRoPE), else 0."""
        return self.max_position_embeddings if self.long_rope_threshold is not None else 0

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None


def _global_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """The rope settings of the full-attention layers: transformers 5 keeps one dict per
    layer type under rope_parameters (Gemma 3), else one for all layers."""
    params = hf.get("rope_parameters") or {}
    return params.get("full_attention", params)


def _local_rope_theta(hf: dict[str, Any]) -> float | None:
    local = (hf.get("rope_parameters") or {}).get("sliding_attention") or {}
    theta = hf.get("rope_local_base_freq") or local.get("rope_theta")
    return float(theta) if theta else None


def _gemma_features(hf: dict[str, Any]) -> dict[str, Any]:
    scalar = hf.get("query_pre_attn_scalar")
    return {"local_rope_theta": _local_rope_theta(hf),
            "norm_weight_offset": 1.0, "sandwich_norms": True,
            "embedding_multiplier": float(hf["hidden_size"]) ** 0.5,
            "query_scale": float(scalar) ** -0.5 if scalar else None,
            "attn_softcap": hf.get("attn_logit_softcapping"),
            "final_softcap": hf.get("final_logit_softcapping")}


def _rotary_dim(hf: dict[str, Any], *, head_dim: int, glm: bool) -> int | None:
    """GLM's rotated dims per head (transformers 5 keeps the factor in rope_parameters);
    other families with a partial factor are refused rather than computed wrongly."""
    factor = float(hf.get("partial_rotary_factor")
                   or _global_rope(hf).get("partial_rotary_factor") or 1.0)
    if not glm:
        if factor != 1.0:
            raise UnsupportedModelError(
                f"partial rotary embeddings (partial_rotary_factor {factor}) are supported "
                f"for GLM only")
        return None
    rotary_dim = int(head_dim * factor)
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise UnsupportedModelError(f"partial_rotary_factor {factor} gives {rotary_dim} "
                                    f"rotated dims of {head_dim}: it must be even")
    return rotary_dim


def _rope_scaling(hf: dict[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    # transformers 5 moved rope settings into "rope_parameters"; older configs use "rope_scaling".
    scaling = hf.get("rope_scaling") or _global_rope(hf)
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "su":  # Phi-3's first name for LongRoPE
        kind = scaling["rope_type"] = "longrope"
    if kind == "default":
        return None
    if kind not in ("llama3", "linear", "longrope"):
        raise UnsupportedModelError(f"rope scaling type {kind!r} is not supported "
                                    f"(llama3, linear and longrope are)")
    if kind == "longrope":  # Phi-3 keeps the pretraining length beside the config's own
        original = (scaling.get("original_max_position_embeddings")
                    or hf.get("original_max_position_embeddings"))
        if not original or "short_factor" not in scaling or "long_factor" not in scaling:
            raise UnsupportedModelError("longrope scaling needs short_factor, long_factor "
                                        "and original_max_position_embeddings")
        scaling = {**scaling, "original_max_position_embeddings": int(original)}
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in scaling.items() if not isinstance(v, dict)))
