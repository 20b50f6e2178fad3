"""rms_norm, add_rms_norm and silu_and_mul kernels against TorchOps."""

from __future__ import annotations

import pytest
import torch

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.ops.cuda_launch import add_rms_norm_into, rms_norm_into, silu_and_mul_into
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, cuda_generator, poisoned,
                               random_tensor)

# (rows, hidden): Llama-3-8B, SmolLM2 (576), a 14B-class width, an odd width (scalar path),
# and a row wider than one pass of 1024 threads.
NORM_SHAPES = ((1, 4096), (37, 576), (300, 5120), (5, 100), (3, 16384))
EPS = 1e-5


def norm_weight(hidden: int, *, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return (1 + random_tensor((hidden,), dtype=torch.float32, generator=generator,
                              scale=0.2)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_rms_norm_matches_reference(library, torch_ops, dtype, shape):
    gen = cuda_generator(hash(shape) % 1000)
    x = random_tensor(shape, dtype=dtype, generator=gen, scale=3.0)
    weight = norm_weight(shape[1], dtype=dtype, generator=gen)
    out = poisoned(shape, dtype=dtype)
    rms_norm_into(library, out, x, weight, EPS)
    assert_close(out, torch_ops.rms_norm(x, weight, EPS), what=f"rms_norm {shape}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_add_rms_norm_returns_normed_sum_and_sum(library, torch_ops, dtype, shape):
    gen = cuda_generator(1 + hash(shape) % 1000)
    x = random_tensor(shape, dtype=dtype, generator=gen)
    residual = random_tensor(shape, dtype=dtype, generator=gen, scale=4.0)
    weight = norm_weight(shape[1], dtype=dtype, generator=gen)
    out = poisoned(shape, dtype=dtype)
    summed = poisoned(shape, dtype=dtype)
    add_rms_norm_into(library, out, summed, x, residual, weight, EPS)
    ref_out, ref_summed = torch_ops.add_rms_norm(x, residual, weight, EPS)
    assert_close(summed, ref_summed, what=f"x + residual {shape}", max_error=1e-3)
    assert_close(out, ref_out, what=f"add_rms_norm {shape}")


def test_norms_read_row_views_of_wider_tensors(library, torch_ops):
    # The attention output projection or a fused buffer can hand the norm a row view.
    gen = cuda_generator(7)
    wide = random_tensor((64, 3 * 2048), dtype=torch.bfloat16, generator=gen)
    x = wide[:, 2048:4096]
    residual = random_tensor((64, 2048), dtype=torch.bfloat16, generator=gen)
    weight = random_tensor((2048,), dtype=torch.bfloat16, generator=gen)
    out = poisoned((64, 2048), dtype=torch.bfloat16)
    summed = poisoned((64, 2048), dtype=torch.bfloat16)
    add_rms_norm_into(library, out, summed, x, residual, weight, EPS)
    ref_out, ref_summed = torch_ops.add_rms_norm(x, residual, weight, EPS)
    assert_close(out, ref_out, what="add_rms_norm on a view")
    assert_close(summed, ref_summed, what="sum on a view", max_error=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows,d", ((1, 14336), (33, 11008), (256, 1536), (7, 100), (3, 2)))
def test_silu_and_mul_matches_reference(library, torch_ops, dtype, rows, d):
    gen = cuda_generator(rows * 31 + d)
    x = random_tensor((rows, 2 * d), dtype=dtype, generator=gen, scale=2.0)
    out = poisoned((rows, d), dtype=dtype)
    silu_and_mul_into(library, out, x)
    assert_close(out, torch_ops.silu_and_mul(x), what=f"silu_and_mul [{rows}, {2 * d}]")


def test_cuda_ops_norm_and_activation_match_torch_ops(cuda_ops, torch_ops):
    gen = cuda_generator(11)
    x = random_tensor((19, 4096), dtype=torch.float16, generator=gen)
    residual = random_tensor((19, 4096), dtype=torch.float16, generator=gen)
    weight = random_tensor((4096,), dtype=torch.float16, generator=gen)
    assert_close(cuda_ops.rms_norm(x, weight, EPS), torch_ops.rms_norm(x, weight, EPS),
                 what="CudaOps.rms_norm")
    for got, want in zip(cuda_ops.add_rms_norm(x, residual, weight, EPS),
                         torch_ops.add_rms_norm(x, residual, weight, EPS)):
        assert_close(got, want, what="CudaOps.add_rms_norm")
    gate_up = random_tensor((19, 2 * 3072), dtype=torch.float16, generator=gen)
    assert_close(cuda_ops.silu_and_mul(gate_up), torch_ops.silu_and_mul(gate_up),
                 what="CudaOps.silu_and_mul")


def test_wrong_dtype_or_device_raises_argument_error(library):
    x = torch.ones((4, 64), dtype=torch.float32, device="cuda")
    with pytest.raises(KernelArgumentError, match="bfloat16 or float16"):
        rms_norm_into(library, torch.empty_like(x), x, torch.ones(64, device="cuda"), EPS)
    x_cpu = torch.ones((4, 64), dtype=torch.bfloat16)
    with pytest.raises(KernelArgumentError, match="is on cpu"):
        silu_and_mul_into(library, torch.empty((4, 32), dtype=torch.bfloat16, device="cuda"),
                          x_cpu)
