"""Qwen3 (a per-head RMSNorm of q and k before rotary) on our kernels and CUDA graphs,
against the torch reference path on the same random bf16 weights."""

from __future__ import annotations

import torch

from server.engine.ops.torch_ref import TorchOps
from server.engine.step.runner import ModelRunner
from tests.gpu.test_cuda_graphs import (BLOCK_SIZE, MAX_MODEL_LEN, NUM_BLOCKS, SMALL_LLAMA,
                                        assert_tracks_reference, small_model_source)

SMALL_QWEN3 = {**SMALL_LLAMA, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
               "rms_norm_eps": 1e-6, "attention_bias": False}
BF16_VS_REFERENCE_MAX_ERROR = 2e-2  # the kernels round in bf16 where the reference does not


def make_qwen3_runner(**kwargs) -> ModelRunner:
    options = dict(dtype=torch.bfloat16, device="cuda", block_size=BLOCK_SIZE,
                   num_blocks=NUM_BLOCKS, max_num_seqs=8, max_model_len=MAX_MODEL_LEN)
    return ModelRunner(small_model_source(SMALL_QWEN3), **{**options, **kwargs})


def test_qwen3_on_our_kernels_and_graphs_matches_the_torch_reference_path():
    runner = make_qwen3_runner()
    runner.capture_graphs()
    assert runner.model.layers[0].q_norm is not None
    assert_tracks_reference(
        runner=runner, reference=make_qwen3_runner(ops=TorchOps(), enforce_eager=True),
        baseline=make_qwen3_runner(enforce_eager=True),
        max_vs_reference=BF16_VS_REFERENCE_MAX_ERROR,
        max_vs_baseline=BF16_VS_REFERENCE_MAX_ERROR, seed=6)
