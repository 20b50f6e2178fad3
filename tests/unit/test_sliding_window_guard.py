"""Checkpoints whose attention slides over a window (Mistral v0.1, Qwen2 with
use_sliding_window): the torch reference attends within the window, so the CPU serves the
whole context; our GPU kernels do not yet, so there the context stays within the window and
a longer --max-model-len is refused naming it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from server.engine import core
from server.engine.loading.dummy import dummy_hf_config, iter_dummy_weights
from server.engine.llm import LLM
from server.engine.models.config import ModelArchConfig


def windowed_dir(tmp_path, *, window: int | None, use_sliding_window: bool | None = None):
    config = {**dummy_hf_config("tiny-mha"), "architectures": ["MistralForCausalLM"],
              "model_type": "mistral", "max_position_embeddings": 256,
              "sliding_window": window}
    if use_sliding_window is not None:
        config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                      use_sliding_window=use_sliding_window, max_window_layers=0)
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    arch = ModelArchConfig.from_hf(config)
    save_file(dict(iter_dummy_weights(arch, seed=1, dtype=torch.float32,
                                      device=torch.device("cpu"))),
              str(path / "model.safetensors"))
    return str(path)


@pytest.fixture
def kernels_without_windows(monkeypatch):
    """The engine as it is on a GPU running our kernels."""
    monkeypatch.setattr(core, "attends_within_windows", lambda model_config, source: False)


def test_the_cpu_serves_the_whole_context_of_a_sliding_window_model(tmp_path):
    llm = LLM(windowed_dir(tmp_path, window=64), device="cpu", kv_cache_tokens=1024)
    assert llm.engine.info.max_model_len == 256


def test_on_our_kernels_the_sliding_window_becomes_the_default_context_length(
        tmp_path, kernels_without_windows):
    llm = LLM(windowed_dir(tmp_path, window=64), device="cpu", kv_cache_tokens=1024)
    assert llm.engine.info.max_model_len == 64


def test_on_our_kernels_a_longer_max_model_len_than_the_window_is_refused_naming_it(
        tmp_path, kernels_without_windows):
    with pytest.raises(ValueError, match="sliding window.*64 tokens"):
        LLM(windowed_dir(tmp_path, window=64), device="cpu", kv_cache_tokens=1024,
            max_model_len=128)


def test_a_window_the_config_turns_off_limits_nothing(tmp_path, kernels_without_windows):
    llm = LLM(windowed_dir(tmp_path, window=64, use_sliding_window=False), device="cpu",
              kv_cache_tokens=1024)
    assert llm.engine.info.max_model_len == 256


def test_qwen2_slides_only_from_max_window_layers_on():
    config = {**dummy_hf_config("qwen2-tiny"), "num_hidden_layers": 4,
              "use_sliding_window": True, "sliding_window": 32, "max_window_layers": 3}
    assert ModelArchConfig.from_hf(config).layer_windows == (None, None, None, 32)
