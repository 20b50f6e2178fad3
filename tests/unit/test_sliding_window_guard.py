"""Checkpoints whose attention slides over a window (Mistral v0.1, Qwen2 with
use_sliding_window) are served only up to that window until windowed attention exists:
past it the engine would attend to keys the model never sees, so it says so instead."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from server.engine.dummy import dummy_hf_config, iter_dummy_weights
from server.engine.llm import LLM
from server.engine.models.config import ModelArchConfig


def windowed_dir(tmp_path, *, window: int | None, use_sliding_window: bool | None = None):
    config = {**dummy_hf_config("tiny-mha"), "architectures": ["MistralForCausalLM"],
              "model_type": "mistral", "max_position_embeddings": 256,
              "sliding_window": window}
    if use_sliding_window is not None:
        config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                      use_sliding_window=use_sliding_window)
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    arch = ModelArchConfig.from_hf(config)
    save_file(dict(iter_dummy_weights(arch, seed=1, dtype=torch.float32,
                                      device=torch.device("cpu"))),
              str(path / "model.safetensors"))
    return str(path)


def test_a_sliding_window_becomes_the_default_context_length(tmp_path):
    llm = LLM(windowed_dir(tmp_path, window=64), device="cpu", kv_cache_tokens=1024)
    assert llm.engine.info.max_model_len == 64


def test_a_longer_max_model_len_than_the_window_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="sliding window.*64 tokens"):
        LLM(windowed_dir(tmp_path, window=64), device="cpu", kv_cache_tokens=1024,
            max_model_len=128)


def test_a_window_the_config_turns_off_limits_nothing(tmp_path):
    llm = LLM(windowed_dir(tmp_path, window=64, use_sliding_window=False), device="cpu",
              kv_cache_tokens=1024)
    assert llm.engine.info.max_model_len == 256
