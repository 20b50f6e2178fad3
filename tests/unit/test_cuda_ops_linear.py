"""CudaOps.linear's choice between our GEMV and cuBLAS, seen through the launches it makes
(no GPU: a library that records launches instead of running them)."""

from __future__ import annotations

import pytest
import torch

from server.engine.ops.cuda import CudaOps
from tests.unit.test_kernel_launch_args import RecordingLibrary


def bf16(*shape: int) -> torch.Tensor:
    return torch.randn(shape).to(torch.bfloat16)


def test_one_token_steps_on_small_weights_use_the_gemv():
    ops = CudaOps(RecordingLibrary(), gemv_max_weight_elements=1024 * 4096)
    out = ops.linear(bf16(1, 4096), bf16(1024, 4096))
    assert out.shape == (1, 1024)
    assert [launch[1] for launch in ops.library.launches] == ["gemv_bf16_m1"]


@pytest.mark.parametrize("shape", ((2, 4096, 1024), (1, 4096, 1025), (1, 4100, 64)))
def test_more_tokens_larger_weights_and_unaligned_rows_use_torch(shape):
    num_tokens, k, n = shape
    ops = CudaOps(RecordingLibrary(), gemv_max_weight_elements=1024 * 4096)
    x, weight = bf16(num_tokens, k), bf16(n, k)
    out = ops.linear(x, weight)
    assert not ops.library.launches
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight))


def test_gemv_token_limit_is_checked():
    with pytest.raises(ValueError, match="gemv_max_tokens must be 0 to 4"):
        CudaOps(RecordingLibrary(), gemv_max_tokens=5)
