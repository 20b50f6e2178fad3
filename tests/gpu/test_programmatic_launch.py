"""Programmatic dependent launch (csrc/common.cuh's wait_for_previous_kernel): a kernel that
starts while the one before it drains must compute exactly what it computes without the
overlap. Two runners on the same random weights, PDL on and off, run the same prefill and
decode steps (eager and replayed graphs); their logits and KV caches must be bit-identical,
with bf16 and FP8 weights and with an e4m3 KV cache."""

from __future__ import annotations

import random

import pytest
import torch

from server.engine.gpu.kernels import KernelLibrary, programmatic_launch_enabled
from server.engine.ops.cuda import CudaOps
from tests.golden.helpers import HandBatcher
from tests.gpu.test_cuda_graphs import BLOCK_SIZE, NUM_BLOCKS, make_runner

VARIANTS = {"bf16": {}, "fp8 weights": {"quantization": "fp8"},
            "fp8 kv cache": {"kv_cache_dtype": "fp8"}}


@pytest.fixture(scope="module", autouse=True)
def _needs_sm90() -> None:
    arch = KernelLibrary().arch
    if not programmatic_launch_enabled(arch, True):
        pytest.skip(f"programmatic launch needs sm_90 or later; this GPU is {arch}")


def runner_with(*, programmatic_launch: bool, options: dict):
    library = KernelLibrary(programmatic_launch=programmatic_launch)
    assert library.programmatic_launch is programmatic_launch
    runner = make_runner(ops=CudaOps(library, gemv_max_tokens=4), **options)
    runner.capture_graphs()
    return runner


def run_steps(runner, *, seed: int) -> list[torch.Tensor]:
    """Prefill of uneven prompts (one longer than many blocks), then decode steps through
    the graphs, each step's logits and finally the KV cache."""
    rng = random.Random(seed)
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    for req_id, length in {"a": 1500, "b": 3, "c": 77, "d": 16}.items():
        batcher.add(req_id=req_id,
                    prompt_token_ids=[rng.randrange(3, 4096) for _ in range(length)])
    out = batcher.step({req_id: None for req_id in "abcd"})
    results = []
    for _ in range(6):
        req_ids, logits, _ = runner.forward_logits(out)
        results.append(logits.clone())
        batcher.record({r: int(t) for r, t in zip(req_ids, logits.argmax(-1))})
        out = batcher.step({req_id: 1 for req_id in "abcd"})
    torch.cuda.synchronize()
    results.append(runner.kv_pool.kv_cache.clone())
    return results


def assert_bit_identical_steps(*, on, off, seed: int, what: str) -> None:
    """run_steps on two runners (replaying graphs) gives the same logits and caches."""
    got, want = run_steps(on, seed=seed), run_steps(off, seed=seed)
    assert on.graphs.num_replays >= 4 and off.graphs.num_replays >= 4
    for step, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"step {step} differs with {what}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_overlapped_launches_compute_bit_identical_steps(variant):
    assert_bit_identical_steps(on=runner_with(programmatic_launch=True, options=VARIANTS[variant]),
                               off=runner_with(programmatic_launch=False,
                                               options=VARIANTS[variant]),
                               seed=7, what=f"programmatic launch ({variant})")
