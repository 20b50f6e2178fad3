"""Which models the batch-1 decode stack (server/engine/fused/decode_stack.py) takes: the
GPT-2-style block in 16 bits on one GPU, and every other model with the reason it is left to
the per-op kernels. Its GPU behaviour is tests/gpu/test_decode_stack.py's."""

from __future__ import annotations

import pytest
import torch

from server.engine.fused.decode_stack import SHARED_BYTES, unsupported_reason
from server.engine.models.config import ModelArchConfig
from server.engine.models.llama import LlamaModel

_SMALL = {"vocab_size": 256, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
GPT2 = {**_SMALL, "architectures": ["GPT2LMHeadModel"], "n_embd": 128, "n_layer": 2,
        "n_head": 2, "n_positions": 256, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5}
BIGCODE = {**_SMALL, "architectures": ["GPTBigCodeForCausalLM"], "n_embd": 256, "n_layer": 2,
           "n_head": 2, "n_positions": 256, "multi_query": True,
           "activation_function": "gelu_pytorch_tanh", "layer_norm_epsilon": 1e-5}
LLAMA = {**_SMALL, "architectures": ["LlamaForCausalLM"], "hidden_size": 128,
         "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "hidden_act": "silu",
         "max_position_embeddings": 256}
MPT = {**_SMALL, "architectures": ["MptForCausalLM"], "d_model": 128, "n_layers": 2,
       "n_heads": 2, "max_seq_len": 256, "layer_norm_epsilon": 1e-5,
       "attn_config": {"alibi": True, "alibi_bias_max": 8}}
STARCODER2 = {**_SMALL, "architectures": ["Starcoder2ForCausalLM"], "hidden_size": 128,
              "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "use_bias": True, "norm_epsilon": 1e-5,
              "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 256}


def reason(hf_config: dict, *, dtype=torch.bfloat16, kv_cache_dtype=None, num_sms=132,
           **model_options) -> str | None:
    model = LlamaModel(ModelArchConfig.from_hf(hf_config), dtype=dtype, device="cpu",
                       **model_options)
    return unsupported_reason(model, num_sms=num_sms, kv_cache_dtype=kv_cache_dtype or dtype)


@pytest.mark.parametrize("hf_config", [GPT2, BIGCODE], ids=["gpt2", "gpt-bigcode"])
def test_the_gpt2_style_block_in_16_bits_is_taken(hf_config):
    assert reason(hf_config) is None
    assert reason(hf_config, dtype=torch.float16) is None


@pytest.mark.parametrize(("hf_config", "why"), [
    (LLAMA, "not LayerNorm with biases"),
    (MPT, "rotary or ALiBi"),
    (STARCODER2, "rotary or ALiBi"),
    ({**GPT2, "n_head": 4}, "head_dim 32"),
    ({**GPT2, "n_embd": 5120, "n_head": 40}, "hidden size over 4096"),
], ids=["llama", "mpt", "starcoder2", "head-dim-32", "too-wide"])
def test_other_blocks_are_left_to_the_per_op_kernels_with_the_reason(hf_config, why):
    assert why in reason(hf_config)


def test_an_e4m3_cache_or_int8_weights_or_float32_are_left_out():
    assert "KV cache" in reason(GPT2, kv_cache_dtype=torch.float8_e4m3fn)
    assert "quantized" in reason(GPT2, quantization="int8_wo")
    assert "16-bit" in reason(GPT2, dtype=torch.float32)


def test_a_gemv_with_more_rows_per_sm_than_the_kernel_stages_is_left_out():
    assert reason(GPT2, num_sms=132) is None
    assert "rows of a GEMV per SM" in reason(GPT2, num_sms=2)  # 512 fc rows over 2 SMs


def test_the_shared_memory_fits_one_cta_of_an_sm90_sm():
    assert SHARED_BYTES <= 227 * 1024
