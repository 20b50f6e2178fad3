"""layer_norm, add_layer_norm (with and without bias), GELU and GeGLU kernels against
TorchOps, which the LayerNorm families (GPT-2, Starcoder, Falcon, MPT, BLOOM) and Gemma
need."""

from __future__ import annotations

import pytest
import torch

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.ops.cuda_norm_act import gelu_into, layer_norm_into
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, cuda_generator, poisoned,
                               random_tensor)
from tests.gpu.test_norm_activation_kernels import EPS, NORM_SHAPES, norm_weight

GELU_KINDS = ("gelu", "gelu_tanh")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("with_bias", (True, False), ids=("bias", "no-bias"))
def test_layer_norm_matches_reference(library, torch_ops, dtype, shape, with_bias):
    gen = cuda_generator(hash((shape, with_bias)) % 1000)
    # an offset mean, as residual streams have, so the mean really is subtracted
    x = random_tensor(shape, dtype=dtype, generator=gen, scale=3.0) + 2
    weight = norm_weight(shape[1], dtype=dtype, generator=gen)
    bias = random_tensor((shape[1],), dtype=dtype, generator=gen) if with_bias else None
    out = poisoned(shape, dtype=dtype)
    layer_norm_into(library, out, x, weight, bias, EPS)
    assert_close(out, torch_ops.layer_norm(x, weight, bias, EPS), what=f"layer_norm {shape}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_add_layer_norm_returns_normed_sum_and_sum(library, torch_ops, dtype, shape):
    gen = cuda_generator(5 + hash(shape) % 1000)
    x = random_tensor(shape, dtype=dtype, generator=gen)
    residual = random_tensor(shape, dtype=dtype, generator=gen, scale=4.0)
    weight = norm_weight(shape[1], dtype=dtype, generator=gen)
    bias = random_tensor((shape[1],), dtype=dtype, generator=gen)
    out, summed = poisoned(shape, dtype=dtype), poisoned(shape, dtype=dtype)
    layer_norm_into(library, out, x, weight, bias, EPS, residual=residual, summed=summed)
    ref_out, ref_summed = torch_ops.add_layer_norm(x, residual, weight, bias, EPS)
    assert torch.equal(summed, ref_summed), f"x + residual {shape}"
    assert_close(out, ref_out, what=f"add_layer_norm {shape}")


def test_layer_norm_reads_row_views_and_refuses_a_residual_without_summed(library, torch_ops):
    gen = cuda_generator(8)
    wide = random_tensor((32, 3 * 1024), dtype=torch.bfloat16, generator=gen)
    x = wide[:, 1024:2048]
    weight = norm_weight(1024, dtype=torch.bfloat16, generator=gen)
    out = poisoned((32, 1024), dtype=torch.bfloat16)
    layer_norm_into(library, out, x, weight, None, EPS)
    assert_close(out, torch_ops.layer_norm(x, weight, None, EPS), what="layer_norm on a view")
    with pytest.raises(KernelArgumentError, match="residual and summed"):
        layer_norm_into(library, out, x, weight, None, EPS, residual=x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", GELU_KINDS)
@pytest.mark.parametrize("rows,d", ((1, 14336), (33, 8192), (256, 1536), (7, 100), (3, 2)))
def test_gelu_and_geglu_match_reference(library, torch_ops, dtype, kind, rows, d):
    gen = cuda_generator(rows * 17 + d)
    x = random_tensor((rows, 2 * d), dtype=dtype, generator=gen, scale=2.0)
    gated = poisoned((rows, d), dtype=dtype)
    gelu_into(library, gated, x, kind, gated=True)
    assert_close(gated, torch_ops.gelu_and_mul(x, kind), what=f"{kind}_and_mul [{rows}, {d}]")
    plain = poisoned((rows, 2 * d), dtype=dtype)
    gelu_into(library, plain, x, kind, gated=False)
    assert_close(plain, torch_ops.gelu(x, kind), what=f"{kind} [{rows}, {2 * d}]")


def test_cuda_ops_layer_norm_and_gelu_match_torch_ops(cuda_ops, torch_ops):
    gen = cuda_generator(12)
    x = random_tensor((9, 2048), dtype=torch.bfloat16, generator=gen)
    residual = random_tensor((9, 2048), dtype=torch.bfloat16, generator=gen)
    weight = norm_weight(2048, dtype=torch.bfloat16, generator=gen)
    bias = random_tensor((2048,), dtype=torch.bfloat16, generator=gen)
    for got, want in zip(cuda_ops.add_layer_norm(x, residual, weight, bias, EPS),
                         torch_ops.add_layer_norm(x, residual, weight, bias, EPS)):
        assert_close(got, want, what="CudaOps.add_layer_norm")
    assert_close(cuda_ops.gelu_and_mul(x, "gelu_tanh"), torch_ops.gelu_and_mul(x, "gelu_tanh"),
                 what="CudaOps.gelu_and_mul")
    with pytest.raises(KernelArgumentError, match="gelu kind"):
        cuda_ops.gelu(x, "relu")
