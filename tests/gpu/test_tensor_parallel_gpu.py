"""Tensor parallelism with what one GPU allows: two ranks sharing it (one GPU each where
there are two; our kernels, bfloat16, the all-reduces on our IPC kernel, decode steps in
CUDA graphs or eager), every family's small config, FP8 weights with an e4m3 cache, and a
GPU rank beside a CPU rank (float32, every collective over gloo), against one rank holding
the whole model. Issue 19 runs them on two GPUs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers

from server.engine.loading.weights import ModelSource
from server.engine.ops.cuda import CudaOps
from tests.golden.tp_helpers import greedy_logits, make_runner, tensor_parallel_logits
from tests.gpu.test_cuda_graphs import small_model_source
from tests.gpu.test_families_gpu import FAMILIES, GEMMA3_VS_REFERENCE_MAX_ERROR

# one GPU each where there are two (issue 19's run), else both on the one GPU
TWO_RANKS = ("cuda:0", "cuda:1") if torch.cuda.device_count() >= 2 else ("cuda", "cuda")
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


def assert_tracks(logits: torch.Tensor, reference: torch.Tensor, *, allowed: float,
                  name: str) -> None:
    """Row by row within `allowed`, up to the first row whose argmax differs: the runs feed
    their own greedy tokens, so a near tie (random tiny models have top-2 gaps of 0.003 in
    float32) that bf16 rounding flips sends them down different paths after it. That row
    must be such a near tie."""
    end = _first_flip(logits, reference)
    errors = (logits[:end].float() - reference[:end]).abs().amax(-1)
    assert errors.max().item() <= allowed, (name, errors.tolist(), allowed)
    if logits[end - 1].argmax() != reference[end - 1].argmax():  # a flip ended the rows
        top = reference[end - 1].topk(2).values
        assert (top[0] - top[1]).item() <= 2 * allowed, (name, end - 1, top.tolist())


def assert_close(outcomes, model_dirs, *, device: str, dtype: torch.dtype, max_error: float):
    for name, path in model_dirs.items():
        status, logits = outcomes[path]
        assert status == "ok", (name, logits)
        runner = make_runner(path, device=device, dtype=dtype)
        if dtype == torch.bfloat16:
            assert isinstance(runner.ops, CudaOps), name
        reference = greedy_logits(runner).float().cpu()
        scale = max(reference.abs().max().item(), 1.0)
        assert_tracks(logits, reference, allowed=max_error * scale, name=name)


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_two_ranks_sharing_the_gpu_on_our_kernels_give_one_ranks_logits(model_dirs, tmp_path,
                                                                       enforce_eager):
    stats = {}
    outcomes = tensor_parallel_logits(list(model_dirs.values()), world_size=2,
                                      tmp_path=tmp_path, devices=TWO_RANKS,
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


def family_sources() -> dict[str, ModelSource]:
    """Every family's small GPU config (test_families_gpu.py), as dummy weights named for it."""
    return {name: replace(small_model_source(config), name=name)
            for name, (config, _) in FAMILIES.items()}


def assert_close_to_one_rank(outcomes, sources, *, quantization=None, kv_cache_dtype="auto"):
    """Rank 0's logits against one rank holding the model in bf16 on our kernels; FP8 runs
    are allowed twice one rank's FP8 error (each rank scales its own share of the o and
    down inputs) on top of bf16's."""
    for name, source in sources.items():
        status, logits = outcomes[name]
        assert status == "ok", (name, logits)
        reference = greedy_logits(make_runner(source, device="cuda", dtype=torch.bfloat16))
        reference = reference.float().cpu()
        scale = max(reference.abs().max().item(), 1.0)
        allowed = (GEMMA3_VS_REFERENCE_MAX_ERROR if name == "gemma3" else BF16_MAX_ERROR) * scale
        if quantization or kv_cache_dtype != "auto":
            one_rank = greedy_logits(make_runner(
                source, device="cuda", dtype=torch.bfloat16, quantization=quantization,
                kv_cache_dtype=kv_cache_dtype)).float().cpu()
            end = _first_flip(one_rank, reference)  # where both still take the same path
            allowed += 2 * (one_rank[:end] - reference[:end]).abs().max().item()
        assert_tracks(logits, reference, allowed=allowed, name=name)


def _first_flip(logits: torch.Tensor, reference: torch.Tensor) -> int:
    """Rows up to and including the first whose argmax differs (all rows if none does)."""
    flips = (logits.argmax(-1) != reference.argmax(-1)).nonzero()
    return int(flips[0]) + 1 if len(flips) else len(reference)


def test_every_family_over_two_ranks_replays_graphs_with_our_all_reduce(tmp_path):
    sources = family_sources()
    stats = {}
    outcomes = tensor_parallel_logits(list(sources.values()), world_size=2, tmp_path=tmp_path,
                                      devices=TWO_RANKS, dtype=torch.bfloat16,
                                      stats=stats, timeout_s=900)
    assert_close_to_one_rank(outcomes, sources)
    for name in sources:
        assert stats[name]["ipc_all_reduce"] and stats[name]["graph_replays"] > 0, (
            name, stats[name])


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_fp8_weights_and_e4m3_cache_over_two_ranks_stay_within_fp8s_error(tmp_path,
                                                                         enforce_eager):
    sources = {name: source for name, source in family_sources().items()
               if name in ("phi3", "mistral-window")}
    outcomes = tensor_parallel_logits(list(sources.values()), world_size=2, tmp_path=tmp_path,
                                      devices=TWO_RANKS, dtype=torch.bfloat16,
                                      quantization="fp8", kv_cache_dtype="fp8",
                                      enforce_eager=enforce_eager)
    assert_close_to_one_rank(outcomes, sources, quantization="fp8", kv_cache_dtype="fp8")
