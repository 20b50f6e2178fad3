"""Tensor parallelism with what one GPU allows: two ranks sharing the GPU (our kernels,
bfloat16; the all-reduces on our IPC kernel, decode steps in CUDA graphs or eager) and a
GPU rank beside a CPU rank (float32, every collective over gloo), against one rank holding
the whole model. Two GPUs and NCCL are issue 19's."""

from __future__ import annotations

import pytest
import torch
import transformers

from server.engine.ops.cuda import CudaOps
from tests.golden.tp_helpers import greedy_logits, make_runner, tensor_parallel_logits

BF16_MAX_ERROR = 3e-2  # of the logits' scale: bf16 partial sums all-reduced in another order
_COMMON = dict(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
               num_attention_heads=4, head_dim=64, max_position_embeddings=256,
               bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "llama-gqa": transformers.LlamaConfig(**_COMMON, num_key_value_heads=2),
    "llama-mqa": transformers.LlamaConfig(**_COMMON, num_key_value_heads=1,
                                          tie_word_embeddings=True),
    "qwen2-bias": transformers.Qwen2Config(**_COMMON, num_key_value_heads=2),
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    dirs = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.config.architectures = [type(model).__name__]
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        dirs[name] = str(path)
    return dirs


def assert_close(outcomes, model_dirs, *, device: str, dtype: torch.dtype, max_error: float):
    for name, path in model_dirs.items():
        status, logits = outcomes[path]
        assert status == "ok", (name, logits)
        runner = make_runner(path, device=device, dtype=dtype)
        if dtype == torch.bfloat16:
            assert isinstance(runner.ops, CudaOps), name
        reference = greedy_logits(runner).float().cpu()
        scale = max(reference.abs().max().item(), 1.0)
        assert (logits.float() - reference).abs().max().item() <= max_error * scale, name


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_two_ranks_sharing_the_gpu_on_our_kernels_give_one_ranks_logits(model_dirs, tmp_path,
                                                                       enforce_eager):
    stats = {}
    outcomes = tensor_parallel_logits(list(model_dirs.values()), world_size=2,
                                      tmp_path=tmp_path, devices=("cuda", "cuda"),
                                      dtype=torch.bfloat16, enforce_eager=enforce_eager,
                                      stats=stats)
    assert_close(outcomes, model_dirs, device="cuda", dtype=torch.bfloat16,
                 max_error=BF16_MAX_ERROR)
    for name, path in model_dirs.items():  # the all-reduces on our IPC kernel, in graphs
        assert stats[path]["ipc_all_reduce"], name
        assert (stats[path]["graph_replays"] > 0) != enforce_eager, (name, stats[path])


def test_a_gpu_rank_beside_a_cpu_rank_gives_one_ranks_float32_logits(model_dirs, tmp_path):
    outcomes = tensor_parallel_logits(list(model_dirs.values()), world_size=2,
                                      tmp_path=tmp_path, devices=("cuda", "cpu"))
    assert_close(outcomes, model_dirs, device="cpu", dtype=torch.float32, max_error=1e-4)
