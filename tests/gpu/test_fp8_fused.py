"""The fused kernels in front of FP8 linear layers (csrc/rms_norm.cu and csrc/activation.cu
"_fp8" kernels) against the unfused kernels' output quantized by csrc/quantize.cu: bit for
bit, values and scales, since the engine's FP8 results must not depend on the fusion."""

from __future__ import annotations

import pytest
import torch

from server.engine.ops.cuda_fp8 import quantize_fp8_rows_into
from server.engine.ops.cuda_fp8_fused import SILU_FP8_MAX_WIDTH
from server.engine.models.quantization import Fp8Rows
from tests.gpu.helpers import DTYPE_IDS, DTYPES, cuda_generator, random_tensor

# Llama-3-8B's hidden size, SmolLM2-135M's (576) and a width with a partial last pass
HIDDEN_SIZES = (4096, 576, 2064)
# Llama-3-8B's MLP width and SmolLM2-135M's (1536)
MLP_WIDTHS = (14336, 1536)


def quantized(ops, x: torch.Tensor) -> Fp8Rows:
    """x through csrc/quantize.cu: what the FP8 linear layer did with an unfused input."""
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
    quantize_fp8_rows_into(ops.library, q, scale, x)
    return Fp8Rows(q=q, scale=scale, dtype=x.dtype)


def assert_same_rows(fused: Fp8Rows, unfused: Fp8Rows) -> None:
    assert fused.dtype == unfused.dtype
    assert torch.equal(fused.scale, unfused.scale)
    mismatched = int((fused.q.view(torch.uint8) != unfused.q.view(torch.uint8)).sum())
    assert mismatched == 0, f"{mismatched} of {fused.q.numel()} fp8 values differ"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
def test_fused_rms_norm_fp8_equals_the_norm_then_the_quantizer(cuda_ops, dtype, hidden):
    gen = cuda_generator(hidden)
    x = random_tensor((33, hidden), dtype=dtype, generator=gen, scale=3.0)
    weight = random_tensor((hidden,), dtype=dtype, generator=gen)
    x[4] = 0  # a row of zeros: the smallest scale, all-zero values
    fused = cuda_ops.rms_norm_fp8(x, weight, 1e-5)
    assert_same_rows(fused, quantized(cuda_ops, cuda_ops.rms_norm(x, weight, 1e-5)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
def test_fused_add_rms_norm_fp8_equals_the_norm_then_the_quantizer(cuda_ops, dtype, hidden):
    gen = cuda_generator(hidden + 1)
    x = random_tensor((17, hidden), dtype=dtype, generator=gen, scale=3.0)
    residual = random_tensor((17, hidden), dtype=dtype, generator=gen, scale=3.0)
    weight = random_tensor((hidden,), dtype=dtype, generator=gen)
    fused, summed = cuda_ops.add_rms_norm_fp8(x, residual, weight, 1e-6)
    normed, ref_summed = cuda_ops.add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(summed, ref_summed)
    assert_same_rows(fused, quantized(cuda_ops, normed))


def test_fused_norm_reads_rows_of_a_strided_view_one_element_at_a_time(cuda_ops):
    # a view two elements into each row is not 16-byte aligned: the kernels' VEC=1 path
    wide = random_tensor((9, 4096 + 16), dtype=torch.bfloat16, generator=cuda_generator(5))
    x = wide[:, 2:4098]
    weight = random_tensor((4096,), dtype=torch.bfloat16, generator=cuda_generator(6))
    fused = cuda_ops.rms_norm_fp8(x, weight, 1e-5)
    assert_same_rows(fused, quantized(cuda_ops, cuda_ops.rms_norm(x, weight, 1e-5)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("width", MLP_WIDTHS)
def test_fused_silu_and_mul_fp8_equals_silu_then_the_quantizer(cuda_ops, dtype, width):
    gen = cuda_generator(width)
    x = random_tensor((21, 2 * width), dtype=dtype, generator=gen, scale=4.0)
    fused = cuda_ops.silu_and_mul_fp8(x)
    assert_same_rows(fused, quantized(cuda_ops, cuda_ops.silu_and_mul(x)))


def test_silu_and_mul_fp8_wider_than_the_fused_kernel_still_matches(cuda_ops):
    width = SILU_FP8_MAX_WIDTH + 16
    x = random_tensor((2, 2 * width), dtype=torch.bfloat16, generator=cuda_generator(7))
    fused = cuda_ops.silu_and_mul_fp8(x)
    assert_same_rows(fused, quantized(cuda_ops, cuda_ops.silu_and_mul(x)))


def test_fused_rows_match_the_torch_reference_ops(cuda_ops, torch_ops):
    gen = cuda_generator(11)
    x = random_tensor((8, 4096), dtype=torch.bfloat16, generator=gen)
    weight = random_tensor((4096,), dtype=torch.bfloat16, generator=gen)
    gate_up = random_tensor((8, 2 * 14336), dtype=torch.bfloat16, generator=gen)
    for fused, reference in ((cuda_ops.rms_norm_fp8(x, weight, 1e-5),
                              torch_ops.rms_norm_fp8(x, weight, 1e-5)),
                             (cuda_ops.silu_and_mul_fp8(gate_up),
                              torch_ops.silu_and_mul_fp8(gate_up))):
        # the kernels round like the reference but for a last bf16 bit here and there
        values = fused.q.float() * fused.scale
        expected = reference.q.float() * reference.scale
        assert torch.allclose(values, expected, rtol=0.07, atol=1e-3 * float(expected.abs().max()))
