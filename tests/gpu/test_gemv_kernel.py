"""The decode GEMV (csrc/gemv.cu) against F.linear in float32, its GELU epilogue against the
GELU kernel, its float32 logits, and CudaOps' choice between it and cuBLAS."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.ops.cuda_launch import GEMV_MAX_TOKENS, gemv_into
from server.engine.ops.cuda_norm_act import gelu_into
from server.engine.ops.torch_ref import TorchOps
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, cuda_generator, poisoned,
                               random_tensor)

# (N, K): Llama-3-8B's qkv and down projections, a small odd N, K with a tail of chunks
# shorter than one unrolled pass (K / 8 = 513 = 2 * 256 + 1), and one pass exactly.
SHAPES = ((6144, 4096), (4096, 14336), (37, 64), (300, 4104), (8, 2048))


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


@pytest.mark.parametrize("with_bias", (False, True))
@pytest.mark.parametrize("num_rows", tuple(range(1, GEMV_MAX_TOKENS + 1)))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gemv_matches_float32_linear(library, shape, dtype, num_rows, with_bias):
    n, k = shape
    gen = cuda_generator(n + k + num_rows)
    x = random_tensor((num_rows, k), dtype=dtype, generator=gen)
    weight = random_tensor((n, k), dtype=dtype, generator=gen, scale=k ** -0.5)
    bias = random_tensor((n,), dtype=dtype, generator=gen) if with_bias else None
    out = poisoned((num_rows, n), dtype=dtype)
    gemv_into(library, out, x, weight, bias)
    assert_close(out.float(), reference(x, weight, bias), what=f"gemv {shape} m={num_rows}")


def test_gemv_reads_rows_of_a_strided_view(library):
    gen = cuda_generator(3)
    wide = random_tensor((3, 4096 + 512), dtype=torch.bfloat16, generator=gen)
    x = wide[:, :4096]  # rows 4608 elements apart
    weight = random_tensor((512, 4096), dtype=torch.bfloat16, generator=gen, scale=1 / 64)
    out = poisoned((3, 512), dtype=torch.bfloat16)
    gemv_into(library, out, x, weight)
    assert_close(out.float(), reference(x, weight, None), what="gemv of a strided x")


@pytest.mark.parametrize("num_rows", (1, 4, 5, 64))
def test_cuda_ops_linear_matches_torch_on_both_paths(cuda_ops, num_rows):
    gen = cuda_generator(num_rows)
    x = random_tensor((num_rows, 4096), dtype=torch.bfloat16, generator=gen)
    weight = random_tensor((1024, 4096), dtype=torch.bfloat16, generator=gen, scale=1 / 64)
    bias = random_tensor((1024,), dtype=torch.bfloat16, generator=gen)
    assert_close(cuda_ops.linear(x, weight, bias).float(), reference(x, weight, bias),
                 what=f"CudaOps.linear m={num_rows}")


@pytest.mark.parametrize("num_rows", (1, GEMV_MAX_TOKENS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gemv_float32_out_is_the_16_bit_kernels_sum_unrounded(library, dtype, num_rows):
    # SmolLM2's LM head, 49,152 x 576: the logits kernel sums as the 16-bit one does
    gen = cuda_generator(num_rows + 40)
    x = random_tensor((num_rows, 576), dtype=dtype, generator=gen)
    weight = random_tensor((49152, 576), dtype=dtype, generator=gen)
    logits = poisoned((num_rows, 49152), dtype=torch.float32)
    gemv_into(library, logits, x, weight)
    rounded = poisoned((num_rows, 49152), dtype=dtype)
    gemv_into(library, rounded, x, weight)
    assert torch.equal(logits.to(dtype), rounded)
    assert_close(logits, reference(x, weight, None), what=f"gemv logits m={num_rows}")


def test_gemv_refuses_float32_out_with_gelu(library):
    x = torch.ones((1, 64), dtype=torch.bfloat16, device="cuda")
    weight = torch.ones((8, 64), dtype=torch.bfloat16, device="cuda")
    out = torch.empty((1, 8), dtype=torch.float32, device="cuda")
    with pytest.raises(KernelArgumentError, match="y must be torch.bfloat16"):
        gemv_into(library, out, x, weight, gelu="gelu")


@pytest.mark.parametrize("num_rows", (1, 3))  # one token on our GEMV, three on cuBLAS
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_ops_logits_are_float32_and_keep_what_16_bits_would_round_away(cuda_ops, dtype,
                                                                            num_rows):
    gen = cuda_generator(7)  # K = 2,048: our GEMV at one token (LOGITS_GEMV_MIN_K)
    hidden = random_tensor((num_rows, 2048), dtype=dtype, generator=gen)
    lm_head = random_tensor((4096, 2048), dtype=dtype, generator=gen)
    logits = cuda_ops.logits(hidden, lm_head)
    expected = reference(hidden, lm_head, None)
    assert logits.dtype == torch.float32
    assert_close(logits, expected, what="CudaOps.logits")
    # float32 logits of ~45 carry detail below float16's step there (1/32)
    assert not torch.equal(logits, logits.to(dtype).float())


@pytest.mark.parametrize("kind", ("gelu", "gelu_tanh"))
@pytest.mark.parametrize("num_rows", (1, GEMV_MAX_TOKENS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gemv_with_gelu_equals_gemv_then_the_gelu_kernel_bit_for_bit(library, dtype, num_rows,
                                                                       kind):
    # gpt2-xl's up projection (6,400 x 1,600), biased as GPT-2's is
    gen = cuda_generator(num_rows)
    x = random_tensor((num_rows, 1600), dtype=dtype, generator=gen)
    weight = random_tensor((6400, 1600), dtype=dtype, generator=gen, scale=1600 ** -0.5)
    bias = random_tensor((6400,), dtype=dtype, generator=gen)
    fused = poisoned((num_rows, 6400), dtype=dtype)
    gemv_into(library, fused, x, weight, bias, gelu=kind)
    plain = poisoned((num_rows, 6400), dtype=dtype)
    gemv_into(library, plain, x, weight, bias)
    unfused = poisoned((num_rows, 6400), dtype=dtype)
    gelu_into(library, unfused, plain, kind, gated=False)
    assert torch.equal(fused, unfused)
    approximate = "tanh" if kind == "gelu_tanh" else "none"
    assert_close(fused.float(), F.gelu(reference(x, weight, bias), approximate=approximate),
                 what=f"gemv + {kind} m={num_rows}")


@pytest.mark.parametrize("num_rows", (1, 5))
def test_cuda_ops_linear_gelu_matches_the_torch_ops_on_both_paths(cuda_ops, num_rows):
    gen = cuda_generator(11 + num_rows)
    x = random_tensor((num_rows, 1024), dtype=torch.bfloat16, generator=gen)
    weight = random_tensor((4096, 1024), dtype=torch.bfloat16, generator=gen, scale=1 / 32)
    bias = random_tensor((4096,), dtype=torch.bfloat16, generator=gen)
    expected = TorchOps().linear_gelu(x, weight, bias, "gelu_tanh")
    assert_close(cuda_ops.linear_gelu(x, weight, bias, "gelu_tanh").float(), expected.float(),
                 what=f"CudaOps.linear_gelu m={num_rows}")
