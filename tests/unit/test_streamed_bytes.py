"""The bytes a one-token decode step reads of a model's weights (the batch-1 roofline's)."""

from __future__ import annotations

import torch

from server.engine.loading.weights import ModelSource
from server.engine.models.config import ModelArchConfig
from server.engine.models.int_schemes import num_bytes
from server.engine.step.runner import ModelRunner

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
         "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 512,
        "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True}


def cpu_model(*, hf_config: dict):
    source = ModelSource(name="tiny", arch=ModelArchConfig.from_hf(hf_config),
                         hf_config=hf_config, weights_dir=None, tokenizer_dir=None,
                         dummy_seed=1)
    return ModelRunner(source, dtype=torch.bfloat16, device="cpu", block_size=16,
                       num_blocks=4).model


def test_an_untied_token_embedding_is_not_streamed_but_the_lm_head_is():
    model = cpu_model(hf_config=LLAMA)
    assert model.embed_tokens is not model.lm_head
    assert (model.num_parameter_bytes() - model.num_streamed_bytes()
            == num_bytes(model.embed_tokens) == 512 * 64 * 2)


def test_a_tied_table_streams_as_the_lm_head_and_positions_do_not():
    model = cpu_model(hf_config=GPT2)
    assert model.embed_tokens is model.lm_head
    assert (model.num_parameter_bytes() - model.num_streamed_bytes()
            == num_bytes(model.embed_positions) == 256 * 64 * 2)
