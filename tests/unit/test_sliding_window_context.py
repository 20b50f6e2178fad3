"""Checkpoints whose attention slides over a window (Mistral v0.1, Qwen2 with
use_sliding_window): the torch reference and our kernels both attend within the window, so
the engine serves the model's whole context, and refuses a --max-model-len past it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from server.engine.loading.dummy import dummy_hf_config, iter_dummy_weights
from server.engine.llm import LLM
from server.engine.models.config import ModelArchConfig


def windowed_dir(tmp_path, *, window: int | None):
    config = {**dummy_hf_config("tiny-mha"), "architectures": ["MistralForCausalLM"],
              "model_type": "mistral", "max_position_embeddings": 256,
              "sliding_window": window}
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    arch = ModelArchConfig.from_hf(config)
    save_file(dict(iter_dummy_weights(arch, seed=1, dtype=torch.float32,
                                      device=torch.device("cpu"))),
              str(path / "model.safetensors"))
    return str(path)


def test_a_sliding_window_model_serves_its_whole_context(tmp_path):
    llm = LLM(windowed_dir(tmp_path, window=64), device="cpu", kv_cache_tokens=1024)
    assert llm.engine.info.max_model_len == 256


def test_a_max_model_len_past_the_context_window_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="--max-model-len 512 is beyond the model's context "
                                         r"window \(256 tokens\)"):
        LLM(windowed_dir(tmp_path, window=64), device="cpu", kv_cache_tokens=1024,
            max_model_len=512)


def test_a_window_the_config_turns_off_leaves_every_layer_global():
    config = {**dummy_hf_config("qwen2-tiny"), "num_hidden_layers": 2,
              "use_sliding_window": False, "sliding_window": 32, "max_window_layers": 0}
    assert ModelArchConfig.from_hf(config).layer_windows == (None, None)


def test_qwen2_slides_only_from_max_window_layers_on():
    config = {**dummy_hf_config("qwen2-tiny"), "num_hidden_layers": 4,
              "use_sliding_window": True, "sliding_window": 32, "max_window_layers": 3}
    assert ModelArchConfig.from_hf(config).layer_windows == (None, None, None, 32)
