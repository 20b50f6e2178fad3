"""The integer-weight kernels (csrc/gemv_int.cu, dequantize_int.cu, w8a8.cu) against
IntWeight.dequantize and float32 torch products: W4A16 and W8A16 at every group size, bf16
and fp16, 1 to 16 tokens on the GEMV and more through dequantize + cuBLAS; W8A8 bit for bit
against its torch reference; the GEMV with SiLU-and-mul as its epilogue; CudaOps.linear, and
every path replayed from a CUDA graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from server.engine.models.int_weights import IntWeight, pack_int4
from server.engine.ops.cuda_int import (INT_GEMV_BLOCK_COLUMNS, INT_GEMV_MAX_TOKENS,
                                        INT_GEMV_SILU_MAX_TOKENS, dequantize_int_into,
                                        gemv_int_into, int_linear, int_linear_silu_and_mul,
                                        int_linear_reference, quantize_int8_rows_into,
                                        quantize_int8_rows_reference)
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, cuda_generator, poisoned,
                               random_tensor)

# (N, K): a Llama-3-8B row length; N short of a 16-column CTA with K of 9 blocks of 128 (the
# 8 warps' passes end unevenly); a wider odd N; N under one CTA
SHAPES = ((512, 4096), (37, 1152), (300, 640), (8, 1024))
GROUPS = (32, 64, 128, None)  # None: one group per row (per channel)
BITS = (4, 8)


def random_int_weight(n: int, k: int, *, bits: int, group_size: int | None, dtype: torch.dtype,
                      seed: int, act_int8: bool = False) -> IntWeight:
    """Random codes over their whole range, integer zero points, positive scales of a few
    sizes (the kernels must take each group's own)."""
    gen = cuda_generator(seed)
    group_size = group_size or k
    groups = k // group_size
    scales = (torch.rand((n, groups), generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    if bits == 4:
        q = torch.randint(0, 16, (n, k), generator=gen, device="cuda")
        zeros = torch.randint(0, 16, (n, groups), generator=gen, device="cuda").to(dtype)
        return IntWeight(qweight=pack_int4(q), scales=scales, zeros=zeros, bits=4,
                         group_size=group_size)
    q = torch.randint(-128, 128, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    return IntWeight(qweight=q, scales=scales, zeros=None, bits=8, group_size=group_size,
                     act_int8=act_int8)


def reference(x: torch.Tensor, weight: IntWeight, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.float(), weight.dequantize(x.dtype).float(),
                    None if bias is None else bias.float())


# every (shape, bits, group size, dtype)
WEIGHT_CASES = [(shape, bits, group, dtype) for shape in SHAPES for bits in BITS
                for group in GROUPS for dtype in DTYPES]
WEIGHT_CASE_IDS = [f"{n}x{k}-w{bits}-g{group or 'K'}-{DTYPE_IDS[DTYPES.index(dtype)]}"
                   for (n, k), bits, group, dtype in WEIGHT_CASES]
each_weight_case = pytest.mark.parametrize(("shape", "bits", "group", "dtype"), WEIGHT_CASES,
                                           ids=WEIGHT_CASE_IDS)


@each_weight_case
def test_dequantize_kernel_is_int_weight_dequantize_bit_for_bit(library, shape, bits, group,
                                                                 dtype):
    n, k = shape
    weight = random_int_weight(n, k, bits=bits, group_size=group, dtype=dtype, seed=n + k)
    out = poisoned((n, k), dtype=dtype)
    dequantize_int_into(library, out, weight)
    assert torch.equal(out, weight.dequantize(dtype))


@each_weight_case
def test_gemv_matches_the_dequantized_product_at_1_to_16_tokens(library, shape, bits, group,
                                                                 dtype):
    n, k = shape
    weight = random_int_weight(n, k, bits=bits, group_size=group, dtype=dtype, seed=n + bits)
    gen = cuda_generator(k + bits)
    bias = random_tensor((n,), dtype=dtype, generator=gen)
    block_scales = [False]  # weights scaled one by one always work; sums per block only ...
    if group is None or group >= INT_GEMV_BLOCK_COLUMNS[bits]:  # ... with wide groups
        block_scales.append(True)
    for num_rows in range(1, INT_GEMV_MAX_TOKENS + 1):
        x = random_tensor((num_rows, k), dtype=dtype, generator=gen)
        with_bias = bias if num_rows % 2 else None
        expected = reference(x, weight, with_bias)
        for block_scale in block_scales:
            out = poisoned((num_rows, n), dtype=dtype)
            gemv_int_into(library, out, x, weight, with_bias, block_scale=block_scale)
            assert_close(out.float(), expected, what=f"gemv w{bits} g{group} m={num_rows} "
                         f"block_scale={block_scale} bias={with_bias is not None}")


# gate|up weights of 2d rows: d = 256 (whole CTAs of 8 outputs), 150 (the last CTA short)
@pytest.mark.parametrize("d", (256, 150))
@pytest.mark.parametrize("group", (32, 128, None))
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gemv_with_silu_and_mul_equals_gemv_then_silu_and_mul(library, cuda_ops, dtype, bits,
                                                              group, d):
    k = 1152
    weight = random_int_weight(2 * d, k, bits=bits, group_size=group, dtype=dtype, seed=d + bits)
    gen = cuda_generator(d + k)
    for num_rows in (1, 3, INT_GEMV_SILU_MAX_TOKENS):
        x = random_tensor((num_rows, k), dtype=dtype, generator=gen)
        gate_up = poisoned((num_rows, 2 * d), dtype=dtype)
        gemv_int_into(library, gate_up, x, weight)
        unfused = cuda_ops.silu_and_mul(gate_up)
        fused = poisoned((num_rows, d), dtype=dtype)
        gemv_int_into(library, fused, x, weight, silu_and_mul=True)
        # the same roundings; the exp and division as activation.cu's fast-math ones, which
        # may differ in the last place of a few outputs (ftz, approximate division)
        assert_close(fused.float(), unfused.float(), what=f"w{bits} g{group} m={num_rows}")
        assert (fused != unfused).float().mean() < 0.01
        expected = F.silu(reference(x, weight, None)[:, :d]) * reference(x, weight, None)[:, d:]
        assert_close(fused.float(), expected, what=f"w{bits} g{group} m={num_rows} vs float32")


def test_cuda_ops_linear_silu_and_mul_takes_the_fused_gemv_to_8_tokens_only(cuda_ops):
    weight = random_int_weight(512, 1024, bits=4, group_size=128, dtype=torch.bfloat16, seed=5)
    gen = cuda_generator(5)
    for num_rows in (1, 8, 9, 40):
        x = random_tensor((num_rows, 1024), dtype=torch.bfloat16, generator=gen)
        expected = cuda_ops.silu_and_mul(int_linear(cuda_ops.library, x, weight))
        assert_close(cuda_ops.linear_silu_and_mul(x, weight).float(), expected.float(),
                     what=f"linear_silu_and_mul m={num_rows}")
    assert int_linear_silu_and_mul(cuda_ops.library, x, weight) is None  # 40 tokens: unfused


def test_gemv_reads_rows_of_a_strided_view(library):
    weight = random_int_weight(256, 2048, bits=4, group_size=128, dtype=torch.bfloat16, seed=1)
    wide = random_tensor((5, 2048 + 256), dtype=torch.bfloat16, generator=cuda_generator(2))
    x = wide[:, :2048]  # rows 2304 elements apart, as q split out of a fused projection
    out = poisoned((5, 256), dtype=torch.bfloat16)
    gemv_int_into(library, out, x, weight)
    assert_close(out.float(), reference(x, weight, None), what="gemv of a strided x")


@pytest.mark.parametrize("num_rows", (17, 64, 300))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", (32, 128, None), ids=lambda g: f"g{g or 'K'}")
@pytest.mark.parametrize("bits", BITS)
def test_large_steps_dequantize_for_cublas(library, bits, group, dtype, num_rows):
    weight = random_int_weight(300, 1152, bits=bits, group_size=group, dtype=dtype, seed=7)
    gen = cuda_generator(num_rows)
    x = random_tensor((num_rows, 1152), dtype=dtype, generator=gen)
    for bias in (None, random_tensor((300,), dtype=dtype, generator=gen)):
        out = int_linear(library, x, weight, bias)
        assert_close(out.float(), reference(x, weight, bias),
                     what=f"int_linear w{bits} g{group} m={num_rows}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k", (16, 4096, 14336, 4104))
def test_int8_quantizer_equals_the_torch_reference_bit_for_bit(library, dtype, k):
    x = random_tensor((37, k), dtype=dtype, generator=cuda_generator(k), scale=3.0)
    x[5] = 0  # a row of zeros gets the smallest scale, not a division by zero
    x[6, 7] = 1e4 if dtype == torch.bfloat16 else 6e4  # one outlier dominates its row
    q = torch.full((37, k), 99, dtype=torch.int8, device="cuda")
    scale = torch.full((37, 1), float("nan"), device="cuda")
    quantize_int8_rows_into(library, q, scale, x)
    ref_q, ref_scale = quantize_int8_rows_reference(x)
    assert torch.equal(scale, ref_scale)
    mismatched = int((q != ref_q).sum())
    assert mismatched == 0, f"{mismatched} of {q.numel()} int8 values differ"


@pytest.mark.parametrize("with_bias", (False, True))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", ((512, 4096), (40, 1040), (8, 4096)))
def test_w8a8_equals_its_torch_reference_bit_for_bit(library, shape, dtype, with_bias):
    """GEMV (<= 16 tokens) and torch._int_mm + epilogue (padded to 17 rows below that) sum
    integers exactly, so both must give the reference's very bits."""
    n, k = shape
    weight = random_int_weight(n, k, bits=8, group_size=None, dtype=dtype, seed=n,
                               act_int8=True)
    gen = cuda_generator(k)
    bias = random_tensor((n,), dtype=dtype, generator=gen) if with_bias else None
    for num_rows in (*range(1, INT_GEMV_MAX_TOKENS + 1), 17, 64, 300):
        x = random_tensor((num_rows, k), dtype=dtype, generator=gen)
        expected = int_linear_reference(x, weight, bias)
        paths = {"auto": int_linear(library, x, weight, bias)}
        if num_rows <= INT_GEMV_MAX_TOKENS:  # the same rows through padded torch._int_mm
            paths["int_mm"] = int_linear(library, x, weight, bias, gemv_max_tokens=0)
        for path, out in paths.items():
            assert torch.equal(out, expected), f"w8a8 {path} {shape} m={num_rows}"
        assert_close(expected.float(), reference(x, weight, bias), max_error=3e-2,
                     what=f"w8a8 against its unquantized activations m={num_rows}")


@pytest.mark.parametrize("num_rows", (1, 9, 64))
@pytest.mark.parametrize("bits", BITS)
def test_cuda_ops_linear_runs_int_weights_on_the_kernels(cuda_ops, bits, num_rows):
    weight = random_int_weight(1024, 4096, bits=bits, group_size=128, dtype=torch.bfloat16,
                               seed=bits)
    gen = cuda_generator(num_rows)
    x = random_tensor((num_rows, 4096), dtype=torch.bfloat16, generator=gen)
    bias = random_tensor((1024,), dtype=torch.bfloat16, generator=gen)
    assert_close(cuda_ops.linear(x, weight, bias).float(), reference(x, weight, bias),
                 what=f"CudaOps.linear w{bits} m={num_rows}")


def test_weights_the_kernels_cannot_take_run_on_the_reference(library):
    """Groups of 96 columns are no power of two: the torch reference computes them."""
    weight = random_int_weight(64, 384, bits=4, group_size=96, dtype=torch.bfloat16, seed=3)
    x = random_tensor((3, 384), dtype=torch.bfloat16, generator=cuda_generator(4))
    assert torch.equal(int_linear(library, x, weight), int_linear_reference(x, weight))


# (bits, act_int8, num_rows): the GEMV with one and two tiles of tokens, dequantize + cuBLAS,
# W8A8's GEMV and its torch._int_mm
GRAPH_CASES = ((4, False, 1), (4, False, 12), (4, False, 40), (8, False, 3), (8, False, 40),
               (8, True, 5), (8, True, 40))


@pytest.mark.parametrize(("bits", "act_int8", "num_rows"), GRAPH_CASES)
def test_int_linear_replays_from_a_cuda_graph(library, bits, act_int8, num_rows):
    """Captured once, replayed on new activations: every path's scratch tensors and
    launches are recorded (no host sync, no allocation outside the graph's pool)."""
    n, k = 768, 2048
    weight = random_int_weight(n, k, bits=bits, group_size=None if act_int8 else 64,
                               dtype=torch.bfloat16, seed=num_rows, act_int8=act_int8)
    gen = cuda_generator(100 + num_rows)
    bias = random_tensor((n,), dtype=torch.bfloat16, generator=gen)
    x = random_tensor((num_rows, k), dtype=torch.bfloat16, generator=gen)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        int_linear(library, x, weight, bias)  # warm-up: loads the kernels, sizes cuBLAS
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = int_linear(library, x, weight, bias)
    for replay in range(3):
        x.copy_(random_tensor((num_rows, k), dtype=torch.bfloat16, generator=gen))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        expected = (int_linear_reference(x, weight, bias) if act_int8
                    else reference(x, weight, bias))
        assert_close(out.float(), expected.float(),
                     what=f"replay {replay}: w{bits} act_int8={act_int8} m={num_rows}")
