"""Weight prefetch into L2 (csrc/prefetch.cu) on the GPU: the kernel asks L2 for bytes and
changes nothing, and a prefetch kernel between two others keeps the second from reading
the first's outputs early (CTA 0 waits for the kernel before it). Two runners on the same
random weights, prefetch on and off, run the same prefill and decode steps (eager and
replayed graphs, with programmatic launch): logits and KV caches must be bit-identical."""

from __future__ import annotations

import pytest
import torch

from server.engine.gpu.kernels import KernelLibrary
from server.engine.ops.cuda import CudaOps
from server.engine.ops.cuda_prefetch import prefetch_enabled, prefetch_into_l2
from tests.gpu.test_cuda_graphs import make_runner
from tests.gpu.test_programmatic_launch import assert_bit_identical_steps

VARIANTS = {"bf16": {}, "fp8 weights": {"quantization": "fp8"},
            "int4 weights": {"quantization": "int4_wo"},
            "fp8 kv cache": {"kv_cache_dtype": "fp8"}}


@pytest.fixture(scope="module", autouse=True)
def _needs_sm90() -> None:
    arch = KernelLibrary().arch
    if not prefetch_enabled(arch, True, requested=True):
        pytest.skip(f"the bulk L2 prefetch needs sm_90 or later; this GPU is {arch}")


def runner_with(*, prefetch: bool, options: dict):
    ops = CudaOps(KernelLibrary(programmatic_launch=True), gemv_max_tokens=4,
                  prefetch_weights=prefetch)
    assert ops.prefetch_weights is prefetch
    runner = make_runner(ops=ops, **options)
    runner.capture_graphs()
    return runner


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefetching_weights_leaves_every_step_bit_identical(variant):
    assert_bit_identical_steps(on=runner_with(prefetch=True, options=VARIANTS[variant]),
                               off=runner_with(prefetch=False, options=VARIANTS[variant]),
                               seed=3, what=f"weight prefetch ({variant})")


def test_a_prefetch_between_two_kernels_keeps_the_second_waiting_for_the_first():
    """A long write, a prefetch, then a read of what was written, with programmatic launch:
    the read sees every write, on every repetition."""
    library = KernelLibrary(programmatic_launch=True)
    ops = CudaOps(library, prefetch_weights=True)
    weight = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    ones = torch.ones(4096, dtype=torch.bfloat16, device="cuda")
    for _ in range(20):
        # new inputs each time: an early read would find the last round's outputs
        x = torch.randn(1, 4096, dtype=torch.bfloat16, device="cuda")
        produced = ops.linear(x, weight)  # a GEMV over 32 MiB: long enough to be caught
        prefetch_into_l2(library, weight)
        consumed = ops.rms_norm(produced, ones, 1e-6)
        torch.cuda.synchronize()
        assert torch.equal(consumed, ops.rms_norm(produced.clone(), ones, 1e-6))
