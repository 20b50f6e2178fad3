"""--quantization fp8's one-token steps on the GPU: csrc/gemv_fp8.cu's weight-only kernels
(16-bit activations times the e4m3 weights, no quantizer) against the float32 reference,
plain and with the gated MLP's SiLU-and-mul as their epilogue, and what CudaOps and a
layer launch for one token and for two."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.models.quantization import Fp8Rows, Fp8Weight, fp8_linear_reference
from server.engine.ops.cuda_fp8 import gemv_w8a16_into
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, cuda_generator, poisoned,
                               random_tensor)

# (N, K): Llama-3-8B's qkv and down; N short of an 8-column CTA with K past a round of loads
SHAPES = ((6144, 4096), (4096, 14336), (40, 4112))


def random_fp8_weight(n: int, k: int, *, dtype: torch.dtype, seed: int) -> Fp8Weight:
    dense = random_tensor((n, k), dtype=dtype, generator=cuda_generator(seed), scale=k ** -0.5)
    return Fp8Weight.empty(n, k, device="cuda").copy_(dense)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_bias", (False, True))
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_weight_only_gemv_matches_the_float32_reference(library, dtype, shape, with_bias):
    n, k = shape
    weight = random_fp8_weight(n, k, dtype=dtype, seed=n + k)
    gen = cuda_generator(k)
    x = random_tensor((1, k), dtype=dtype, generator=gen)
    bias = random_tensor((n,), dtype=dtype, generator=gen) if with_bias else None
    out = poisoned((1, n), dtype=dtype)
    gemv_w8a16_into(library, out, x, weight, bias)
    assert_close(out.float(), fp8_linear_reference(x, weight, bias).float(),
                 what=f"gemv_w8a16 {shape} bias={with_bias}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", (14336, 24))
def test_weight_only_gemv_with_silu_and_mul_equals_gemv_then_silu_and_mul(library, cuda_ops,
                                                                          dtype, d):
    k = 4112
    weight = random_fp8_weight(2 * d, k, dtype=dtype, seed=d)
    x = random_tensor((1, k), dtype=dtype, generator=cuda_generator(d + 1))
    gate_up = poisoned((1, 2 * d), dtype=dtype)
    gemv_w8a16_into(library, gate_up, x, weight)
    unfused = cuda_ops.silu_and_mul(gate_up)
    fused = poisoned((1, d), dtype=dtype)
    gemv_w8a16_into(library, fused, x, weight, silu_and_mul=True)
    # the same roundings; the exp and division as activation.cu's fast-math ones, which may
    # differ in the last place of a few outputs (ftz, approximate division)
    assert_close(fused.float(), unfused.float(), what=f"silu epilogue d={d}")
    assert (fused != unfused).float().mean() < 0.01
    reference = fp8_linear_reference(x, weight).float()
    assert_close(fused.float(), F.silu(reference[:, :d]) * reference[:, d:],
                 what=f"silu epilogue d={d} vs float32")


def test_weight_only_gemv_refuses_what_its_epilogue_cannot_divide(library):
    weight = random_fp8_weight(2 * 12, 64, dtype=torch.bfloat16, seed=3)  # d = 12: 3 CTAs
    x = random_tensor((1, 64), dtype=torch.bfloat16, generator=cuda_generator(3))
    odd = random_fp8_weight(2 * 10, 64, dtype=torch.bfloat16, seed=4)  # d = 10: 2.5 CTAs
    with pytest.raises(KernelArgumentError, match="multiples of 8"):
        gemv_w8a16_into(library, poisoned((1, 10), dtype=torch.bfloat16), x, odd,
                        silu_and_mul=True)
    with pytest.raises(KernelArgumentError, match="no bias"):
        gemv_w8a16_into(library, poisoned((1, 12), dtype=torch.bfloat16), x, weight,
                        torch.zeros(24, dtype=torch.bfloat16, device="cuda"), silu_and_mul=True)
    with pytest.raises(KernelArgumentError):  # two tokens are the W8A8 kernels' work
        gemv_w8a16_into(library, poisoned((2, 24), dtype=torch.bfloat16),
                        random_tensor((2, 64), dtype=torch.bfloat16,
                                      generator=cuda_generator(5)), weight)


def test_cuda_ops_multiply_one_token_unquantized_and_two_quantized(cuda_ops):
    weight = random_fp8_weight(512, 1024, dtype=torch.bfloat16, seed=6)
    x = random_tensor((2, 1024), dtype=torch.bfloat16, generator=cuda_generator(6))
    one = cuda_ops.linear(x[:1], weight)
    assert_close(one.float(), fp8_linear_reference(x[:1], weight).float(), what="one token")
    quantized_one = cuda_ops.linear(Fp8Rows.of(x[:1]), weight)
    assert not torch.equal(one, quantized_one)  # the 16-bit row, not its e4m3 rounding
    two = cuda_ops.linear(x, weight)
    assert torch.equal(two, cuda_ops.linear(Fp8Rows.of(x), weight))
    fused = cuda_ops.linear_silu_and_mul(x[:1], weight)
    assert_close(fused.float(), cuda_ops.silu_and_mul(one).float(), what="ops silu epilogue")
