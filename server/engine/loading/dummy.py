"""Random weights for named model shapes (`dummy:<shape>`), for tests and benchmarks.

Each shape is a Hugging Face config.json dict, so a dummy model goes through the same
ModelArchConfig and weight layout as a real checkpoint. Tensors are drawn one at a time,
directly in the requested dtype on the requested device: an 8B shape on a GPU never
materialises in fp32 on the host.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator

import torch

from server.engine.models.config import ModelArchConfig
from server.engine.models.weight_layout import is_norm_weight, weight_shapes

# Small enough that logits stay finite and well spread through many layers.
DUMMY_WEIGHT_STD = 0.02

_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu"}
_MISTRAL = {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
            "hidden_act": "silu", "sliding_window": None}
_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
          "use_sliding_window": False}
_QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
          "use_sliding_window": False, "attention_bias": False}

_PHI3 = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_act": "silu",
         "pad_token_id": 0}

_STARCODER2 = {"architectures": ["Starcoder2ForCausalLM"], "model_type": "starcoder2",
               "hidden_act": "gelu_pytorch_tanh", "use_bias": True, "norm_epsilon": 1e-5}

_GEMMA2 = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
           "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": 50.0,
           "final_logit_softcapping": 30.0, "tie_word_embeddings": True, "pad_token_id": 0}

_GEMMA3 = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
           "hidden_activation": "gelu_pytorch_tanh", "rope_local_base_freq": 10000.0,
           "sliding_window_pattern": 6, "tie_word_embeddings": True, "pad_token_id": 0}

_GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
         "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "n_inner": None,
         "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True}

_BIGCODE = {"architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode",
            "activation_function": "gelu_pytorch_tanh", "multi_query": True}

_MPT = {"architectures": ["MptForCausalLM"], "model_type": "mpt", "no_bias": True,
        "expansion_ratio": 4, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
        "attn_config": {"alibi": True, "alibi_bias_max": 8}}

_BLOOM = {"architectures": ["BloomForCausalLM"], "model_type": "bloom",
          "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}

_FALCON = {"architectures": ["FalconForCausalLM"], "model_type": "falcon",
           "layer_norm_epsilon": 1e-5, "activation": "gelu", "bias": False, "alibi": False}

_GLM = {"architectures": ["GlmForCausalLM"], "model_type": "glm", "hidden_act": "silu",
        "attention_bias": True, "partial_rotary_factor": 0.5, "tie_word_embeddings": False}

_BAICHUAN = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
             "hidden_act": "silu"}

# The tiny shapes use the default model's vocabulary size so its tokenizer fits them.
_TINY = {"vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16,
         "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "bos_token_id": 1, "eos_token_id": 2}

_LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "bos_token_id": 128000, "eos_token_id": [128001, 128009],
              "tie_word_embeddings": False}

DUMMY_CONFIGS: dict[str, dict[str, Any]] = {
    # GQA, tied embeddings.
    "tiny": {**_LLAMA, **_TINY, "num_key_value_heads": 2, "tie_word_embeddings": True},
    # MHA, untied.
    "tiny-mha": {**_LLAMA, **_TINY, "num_key_value_heads": 4, "tie_word_embeddings": False},
    # MQA, untied, Mistral.
    "tiny-mqa": {**_MISTRAL, **_TINY, "num_key_value_heads": 1, "tie_word_embeddings": False},
    # GQA with Llama 3.1 rope scaling.
    "tiny-llama3": {**_LLAMA, **_TINY, "num_key_value_heads": 2, "tie_word_embeddings": False,
                    "rope_theta": 500000.0,
                    "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 256}},
    # q/k/v bias, GQA, tied.
    "qwen2-tiny": {**_QWEN2, **_TINY, "num_key_value_heads": 2, "tie_word_embeddings": True,
                   "rms_norm_eps": 1e-6},
    "smollm2-135m": {**_LLAMA, "vocab_size": 49152, "hidden_size": 576,
                     "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                     "rope_theta": 100000.0, "tie_word_embeddings": True,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
    "llama-2-7b": {**_LLAMA, "vocab_size": 32000, "hidden_size": 4096,
                   "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                   "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
                   "tie_word_embeddings": False},
    "llama-3-8b": {**_LLAMA, **_LLAMA3_8B},
    "llama-3.1-8b": {**_LLAMA, **_LLAMA3_8B, "max_position_embeddings": 131072,
                     "eos_token_id": [128001, 128008, 128009],
                     "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}},
    "llama-3-70b": {**_LLAMA, **_LLAMA3_8B, "hidden_size": 8192, "intermediate_size": 28672,
                    "num_hidden_layers": 80, "num_attention_heads": 64},
    "mistral-7b": {**_MISTRAL, "vocab_size": 32768, "hidden_size": 4096,
                   "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8,
                   "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
                   "rope_theta": 1000000.0, "bos_token_id": 1, "eos_token_id": 2,
                   "tie_word_embeddings": False},
    "qwen2.5-0.5b": {**_QWEN2, "vocab_size": 151936, "hidden_size": 896,
                     "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2,
                     "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                     "rope_theta": 1000000.0, "bos_token_id": 151643,
                     "eos_token_id": 151645, "tie_word_embeddings": True},
    "qwen2.5-7b": {**_QWEN2, "vocab_size": 152064, "hidden_size": 3584,
                   "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4,
                   "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                   "rope_theta": 1000000.0, "bos_token_id": 151643,
                   "eos_token_id": 151645, "tie_word_embeddings": False},
    # Qwen3: per-head RMSNorm of q and k before rotary
    "qwen3-tiny": {**_QWEN3, **_TINY, "num_key_value_heads": 2, "tie_word_embeddings": False,
                   "rms_norm_eps": 1e-6},
    "qwen3-8b": {**_QWEN3, "vocab_size": 151936, "hidden_size": 4096,
                 "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
                 "rope_theta": 1000000.0, "bos_token_id": 151643,
                 "eos_token_id": 151645, "tie_word_embeddings": False},
    # Phi-3: qkv_proj and gate_up_proj stored fused; mini's head_dim is 96
    "phi3-tiny": {**_PHI3, **_TINY, "num_key_value_heads": 2, "tie_word_embeddings": False},
    "phi-3-mini": {**_PHI3, "vocab_size": 32064, "hidden_size": 3072,
                   "intermediate_size": 8192, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                   "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 32000,
                   "sliding_window": 2047, "tie_word_embeddings": False},
    # Starcoder2: LayerNorm with biases, biased projections, ungated tanh-GELU MLP
    "starcoder2-tiny": {**_STARCODER2, **_TINY, "num_key_value_heads": 2,
                        "tie_word_embeddings": True},
    "starcoder2-7b": {**_STARCODER2, "vocab_size": 49152, "hidden_size": 4608,
                      "intermediate_size": 18432, "num_hidden_layers": 32,
                      "num_attention_heads": 36, "num_key_value_heads": 4,
                      "max_position_embeddings": 16384, "norm_epsilon": 1e-5,
                      "rope_theta": 1000000.0, "sliding_window": 4096, "bos_token_id": 0,
                      "eos_token_id": 0, "tie_word_embeddings": False},
    # Gemma 2: (1 + w) sandwich norms, GeGLU, soft-capped scores and logits, head_dim 256
    "gemma2-tiny": {**_GEMMA2, **_TINY, "num_key_value_heads": 2, "query_pre_attn_scalar": 16,
                    "sliding_window": 1024},
    "gemma-2-9b": {**_GEMMA2, "vocab_size": 256000, "hidden_size": 3584,
                   "intermediate_size": 14336, "num_hidden_layers": 42,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                   "query_pre_attn_scalar": 256, "max_position_embeddings": 8192,
                   "sliding_window": 4096, "rms_norm_eps": 1e-6, "bos_token_id": 2,
                   "eos_token_id": [1, 107]},
    # Gemma 3: (1 + w) q/k norms; 5 sliding layers (local rotary base) to 1 global
    "gemma3-tiny": {**_GEMMA3, **_TINY, "num_key_value_heads": 2, "query_pre_attn_scalar": 16,
                    "sliding_window": 512, "sliding_window_pattern": 2},
    "gemma-3-12b": {**_GEMMA3, "vocab_size": 262208, "hidden_size": 3840,
                    "intermediate_size": 15360, "num_hidden_layers": 48,
                    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                    "query_pre_attn_scalar": 256, "max_position_embeddings": 131072,
                    "sliding_window": 1024, "rope_theta": 1000000.0,
                    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                    "rms_norm_eps": 1e-6, "bos_token_id": 2, "eos_token_id": [1, 106]},
    # GPT-2: learned positions, LayerNorm, biased fused c_attn (its own config keys)
    "gpt2-tiny": {**_GPT2, "vocab_size": 49152, "n_embd": 64, "n_layer": 2, "n_head": 4,
                  "n_positions": 1024, "bos_token_id": 1, "eos_token_id": 2},
    "gpt2-xl": {**_GPT2, "vocab_size": 50257, "n_embd": 1600, "n_layer": 48, "n_head": 25,
                "n_positions": 1024},
    # GPTBigCode (Starcoder 1): GPT-2's layout, Linear weights, multi-query attention
    "gpt-bigcode-tiny": {**_GPT2, **_BIGCODE, "vocab_size": 49152, "n_embd": 64, "n_layer": 2,
                         "n_head": 4, "n_positions": 1024, "bos_token_id": 1,
                         "eos_token_id": 2},
    "starcoder-1b": {**_GPT2, **_BIGCODE, "vocab_size": 49152, "n_embd": 2048, "n_layer": 24,
                     "n_head": 16, "n_positions": 8192, "n_inner": 8192, "bos_token_id": 0,
                     "eos_token_id": 0},
    # MPT: ALiBi, LayerNorm and linear layers without biases
    "mpt-tiny": {**_MPT, "vocab_size": 49152, "d_model": 64, "n_layers": 2, "n_heads": 4,
                 "max_seq_len": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "mpt-7b": {**_MPT, "vocab_size": 50432, "d_model": 4096, "n_layers": 32, "n_heads": 32,
               "max_seq_len": 2048, "bos_token_id": 0, "eos_token_id": 0},
    # BLOOM: ALiBi, a LayerNorm on the embeddings, q|k|v stored head by head
    "bloom-tiny": {**_BLOOM, "vocab_size": 49152, "hidden_size": 64, "n_layer": 2,
                   "n_head": 4, "bos_token_id": 1, "eos_token_id": 2},
    "bloom-7b1": {**_BLOOM, "vocab_size": 250880, "hidden_size": 4096, "n_layer": 30,
                  "n_head": 32, "bos_token_id": 1, "eos_token_id": 2},
    # Falcon 7B: attention and MLP in parallel under one LayerNorm, multi-query, rotary
    "falcon-tiny": {**_FALCON, "vocab_size": 49152, "hidden_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "multi_query": True, "parallel_attn": True,
                    "max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "falcon-7b": {**_FALCON, "vocab_size": 65024, "hidden_size": 4544, "num_hidden_layers": 32,
                  "num_attention_heads": 71, "multi_query": True, "parallel_attn": True,
                  "max_position_embeddings": 2048, "bos_token_id": 11, "eos_token_id": 11},
    # GLM 4 (glm-4-9b-chat-hf): half of each head rotated, q|k|v biased, 2 kv heads
    "glm-tiny": {**_GLM, **_TINY, "num_key_value_heads": 2},
    "glm-4-9b": {**_GLM, "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 13696,
                 "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2,
                 "head_dim": 128, "max_position_embeddings": 131072,
                 "rms_norm_eps": 1.5625e-07, "rope_theta": 10000.0, "pad_token_id": 151329,
                 "eos_token_id": [151329, 151336, 151338]},
    # Baichuan 2 (rotary 7B): q|k|v stored as one W_pack, lm_head rows normalised
    "baichuan2-tiny": {**_BAICHUAN, **_TINY, "num_key_value_heads": 4,
                       "tie_word_embeddings": False},
    "baichuan2-7b": {**_BAICHUAN, "vocab_size": 125696, "hidden_size": 4096,
                     "intermediate_size": 11008, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 32,
                     "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
                     "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False},
    # Baichuan 2 13B: ALiBi (no rotary, no max_position_embeddings: model_max_length)
    "baichuan2-13b": {**_BAICHUAN, "vocab_size": 125696, "hidden_size": 5120,
                      "intermediate_size": 13696, "num_hidden_layers": 40,
                      "num_attention_heads": 40, "model_max_length": 4096, "rms_norm_eps": 1e-6,
                      "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False},
}

DUMMY_PREFIX = "dummy:"


def dummy_hf_config(shape: str) -> dict[str, Any] | None:
    """A fresh copy of the shape's config (callers may mutate it), or None if unknown."""
    config = DUMMY_CONFIGS.get(shape)
    if config is None:
        return None
    return {key: (dict(value) if isinstance(value, dict) else
                  list(value) if isinstance(value, list) else value)
            for key, value in config.items()}


def _tensor_seed(seed: int, name: str) -> int:
    # Per-tensor seeds make each tensor independent of load order and of which others exist.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def dummy_tensor(name: str, shape: tuple[int, ...], *, seed: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    if is_norm_weight(name):
        return torch.ones(shape, dtype=dtype, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(_tensor_seed(seed, name))
    tensor = torch.empty(shape, dtype=dtype, device=device)
    return tensor.normal_(mean=0.0, std=DUMMY_WEIGHT_STD, generator=generator)


def iter_dummy_weights(arch: ModelArchConfig, *, seed: int, dtype: torch.dtype,
                       device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight, generated lazily one tensor at a time."""
    for name, shape in weight_shapes(arch).items():
        yield name, dummy_tensor(name, shape, seed=seed, dtype=dtype, device=device)
