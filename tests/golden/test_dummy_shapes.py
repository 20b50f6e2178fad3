"""Every `dummy:<shape>`: its config is one the engine accepts, and each tiny shape runs a
prefill and a decode step on the CPU with finite, spread logits (the real-size shapes are
for GPU benchmarks; here only their configs are checked)."""

from __future__ import annotations

import pytest
import torch

from server.engine.loading.dummy import DUMMY_CONFIGS
from server.engine.models.config import ModelArchConfig
from server.engine.step.runner import ModelRunner
from server.engine.loading.weights import resolve_model
from tests.golden.helpers import HandBatcher, single_torch_thread

TINY_SHAPES = [shape for shape in DUMMY_CONFIGS if "tiny" in shape]


@pytest.mark.parametrize("shape", list(DUMMY_CONFIGS))
def test_every_dummy_shape_is_a_config_the_engine_accepts(shape: str):
    arch = ModelArchConfig.from_hf(DUMMY_CONFIGS[shape])
    assert arch.num_heads % arch.num_kv_heads == 0
    assert arch.vocab_size > 0 and arch.num_layers > 0


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_tiny_dummy_shape_prefills_and_decodes_with_finite_logits(shape: str):
    with single_torch_thread():
        runner = ModelRunner(resolve_model(f"dummy:{shape}"), dtype=torch.float32,
                             device="cpu", block_size=4, num_blocks=8)
        batcher = HandBatcher(num_blocks=8, block_size=4)
        batcher.add(req_id="r", prompt_token_ids=[1, 500, 9000, 42, 7])
        for _ in range(2):  # the prompt, then one generated token
            req_ids, logits, _ = runner.forward_logits(batcher.step({"r": None}))
            assert req_ids == ("r",) and torch.isfinite(logits).all()
            assert logits.std() > 1e-3
            batcher.record({"r": int(logits[0].argmax())})
