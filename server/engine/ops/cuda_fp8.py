"""The FP8 linear layer on the GPU (`--quantization fp8`, server.engine.models.quantization):
csrc/quantize.cu turns the activations into FP8 rows with one scale each, then
torch._scaled_mm multiplies them with the FP8 weight on the tensor cores, applies the row
and channel scales to the float32 accumulators and writes bfloat16. Steps of a few tokens
use csrc/gemv_fp8.cu instead, which streams the FP8 weights at the memory's speed (its
tensor-core kernel; the CUDA-core one stays for comparison, bench/gemv.py --fp8), and steps
of one token its weight-only kernel on the 16-bit activations as they are (no quantizer:
quantization.FP8_WEIGHT_ONLY_MAX_TOKENS).
"""

from __future__ import annotations

import numpy as np
import torch

from server.engine.gpu.kernel_args import (KernelArgumentError, check_aligned16, check_contiguous,
                                       check_device, check_dtype, check_shape, dtype_suffix,
                                       row_stride)
from server.engine.gpu.kernels import KernelLibrary
from server.engine.ops.cuda_launch import GEMV_COLUMNS_PER_CTA, GEMV_MAX_TOKENS
from server.engine.models.quantization import (FP8_DIM_MULTIPLE, FP8_DTYPE, Fp8Rows, Fp8Weight,
                                              quantizes_activations)

QUANTIZE_THREADS = 256  # the launch bound of csrc/quantize.cu's and csrc/w8a8.cu's quantizers
# csrc/gemv_fp8.cu's tensor-core GEMV: tokens are the MMA's N (8), 16 columns (its M) per
# CTA of kMmaGemvWarps warps
FP8_MMA_GEMV_MAX_TOKENS = 8
FP8_MMA_GEMV_COLUMNS = 16
FP8_MMA_GEMV_WARPS = 8
# the weight-only GEMV's SiLU-and-mul epilogue: gate|up column pairs per CTA (kSiluColumns)
W8A16_SILU_COLUMNS = GEMV_COLUMNS_PER_CTA // 2


def quantize_fp8_rows_into(lib: KernelLibrary, q: torch.Tensor, scale: torch.Tensor,
                           x: torch.Tensor) -> None:
    """q [R, K] float8_e4m3fn and scale [R, 1] float32 with x ~= q * scale, row by row."""
    launch_row_quantizer(lib, ("quantize", "quantize_fp8_rows"), q, scale, x,
                         q_dtype=FP8_DTYPE, k_multiple=FP8_DIM_MULTIPLE, what="FP8")


def launch_row_quantizer(lib: KernelLibrary, kernel: tuple[str, str], q: torch.Tensor,
                         scale: torch.Tensor, x: torch.Tensor, *, q_dtype: torch.dtype,
                         k_multiple: int, what: str) -> None:
    """A row quantizer, kernel = (module, name without its dtype suffix): csrc/quantize.cu's
    FP8, csrc/w8a8.cu's int8. One CTA per row of x [R, K] writes q [R, K] of q_dtype and
    scale [R, 1] float32; x's rows may be views 16-byte aligned."""
    check_device(lib.device, x=x, q=q, scale=scale)
    suffix = dtype_suffix("x", x)
    check_dtype(q_dtype, q=q)
    check_dtype(torch.float32, scale=scale)
    check_shape("x", x, (None, None))
    num_rows, k = x.shape
    if k % k_multiple:
        raise KernelArgumentError(f"x's rows must be a multiple of {k_multiple} long for "
                                  f"{what}, got {k}")
    check_shape("q", q, (num_rows, k))
    check_shape("scale", scale, (num_rows, 1))
    check_contiguous(q=q, scale=scale)
    x_stride = row_stride("x", x)
    check_aligned16("x", x, x_stride)
    if num_rows == 0:
        return
    threads = min(QUANTIZE_THREADS, -(-(k // 8) // 32) * 32)
    module, name = kernel
    lib.launch(module, f"{name}_{suffix}", grid=(num_rows,), block=(threads,),
               args=(q.data_ptr(), scale.data_ptr(), x.data_ptr(), np.int32(k),
                     np.int64(x_stride)))


def gemv_fp8_into(lib: KernelLibrary, y: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                  weight: Fp8Weight, bias: torch.Tensor | None = None, *,
                  tensor_cores: bool | None = None) -> None:
    """y [M, N] bf16 = (q [M, K] * scale [M, 1]) @ (weight [N, K])^T (+ bias): on the tensor
    cores (gemv_fp8_mma, M <= 8) or the CUDA cores (M <= 4); None: the CUDA cores for one
    token, where they stream the weights 12-25 % faster, the tensor cores for 2 to 8, where
    they are 1.2-2x faster (bench/gemv.py --fp8 on an H200, docs/benchmarks.md)."""
    if tensor_cores is None:
        tensor_cores = q.shape[0] > 1
    check_device(lib.device, q=q, scale=scale, y=y, weight=weight.data,
                 weight_scale=weight.scale)
    check_dtype(FP8_DTYPE, q=q, weight=weight.data)
    check_dtype(torch.float32, scale=scale, weight_scale=weight.scale)
    check_dtype(torch.bfloat16, y=y)
    num_rows, k = q.shape
    n = weight.shape[0]
    most = FP8_MMA_GEMV_MAX_TOKENS if tensor_cores else GEMV_MAX_TOKENS
    if not 1 <= num_rows <= most:
        raise KernelArgumentError(f"gemv_fp8 takes 1 to {most} rows here, got {num_rows}")
    check_shape("weight", weight.data, (n, k))
    check_shape("scale", scale, (num_rows, 1))
    check_shape("y", y, (num_rows, n))
    check_contiguous(q=q, scale=scale, y=y, weight=weight.data, weight_scale=weight.scale)
    if bias is not None:
        check_device(lib.device, bias=bias)
        check_dtype(torch.bfloat16, bias=bias)
        check_shape("bias", bias, (n,))
        check_contiguous(bias=bias)
    if k % FP8_DIM_MULTIPLE:
        raise KernelArgumentError(f"gemv_fp8 needs K a multiple of {FP8_DIM_MULTIPLE}, got {k}")
    check_aligned16("q", q, k)
    check_aligned16("weight", weight.data, k)
    pointers = (y.data_ptr(), weight.data.data_ptr(), weight.scale.data_ptr(), q.data_ptr(),
                scale.data_ptr(), 0 if bias is None else bias.data_ptr())
    if tensor_cores:
        lib.launch("gemv_fp8", "gemv_fp8_mma_bf16", grid=(-(-n // FP8_MMA_GEMV_COLUMNS),),
                   block=(32 * FP8_MMA_GEMV_WARPS,),
                   args=(*pointers, np.int32(num_rows), np.int32(n), np.int32(k)))
        return
    lib.launch("gemv_fp8", f"gemv_fp8_bf16_m{num_rows}",
               grid=(-(-n // GEMV_COLUMNS_PER_CTA),), block=(32 * GEMV_COLUMNS_PER_CTA,),
               args=(*pointers, np.int32(n), np.int32(k)))


def gemv_w8a16_into(lib: KernelLibrary, y: torch.Tensor, x: torch.Tensor, weight: Fp8Weight,
                    bias: torch.Tensor | None = None, *, silu_and_mul: bool = False) -> None:
    """One token's y [1, N] = x [1, K] @ weight.dequantize()^T (+ bias), x and y 16-bit; with
    silu_and_mul, weight is the gated MLP's gate|up [2d, K] and y [1, d] = silu(gate) * up
    (no bias)."""
    check_device(lib.device, x=x, y=y, weight=weight.data, weight_scale=weight.scale)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, y=y)
    check_dtype(FP8_DTYPE, weight=weight.data)
    check_dtype(torch.float32, weight_scale=weight.scale)
    n, k = weight.shape
    check_shape("x", x, (1, k))
    check_contiguous(x=x, y=y, weight=weight.data, weight_scale=weight.scale)
    if k % FP8_DIM_MULTIPLE:
        raise KernelArgumentError(f"gemv_w8a16 needs K a multiple of {FP8_DIM_MULTIPLE}, "
                                  f"got {k}")
    check_aligned16("x", x, k)
    check_aligned16("weight", weight.data, k)
    block = (32 * GEMV_COLUMNS_PER_CTA,)
    if silu_and_mul:
        if bias is not None or n % (2 * W8A16_SILU_COLUMNS):
            raise KernelArgumentError(f"gemv_w8a16_silu takes no bias and gate|up rows in "
                                      f"multiples of {2 * W8A16_SILU_COLUMNS}, got {n}")
        check_shape("y", y, (1, n // 2))
        lib.launch("gemv_fp8", f"gemv_w8a16_silu_{suffix}", grid=(n // 2 // W8A16_SILU_COLUMNS,),
                   block=block, args=(y.data_ptr(), weight.data.data_ptr(),
                                      weight.scale.data_ptr(), x.data_ptr(), np.int32(n),
                                      np.int32(k)))
        return
    check_shape("y", y, (1, n))
    if bias is not None:
        check_device(lib.device, bias=bias)
        check_dtype(x.dtype, bias=bias)
        check_shape("bias", bias, (n,))
        check_contiguous(bias=bias)
    lib.launch("gemv_fp8", f"gemv_w8a16_{suffix}", grid=(-(-n // GEMV_COLUMNS_PER_CTA),),
               block=block, args=(y.data_ptr(), weight.data.data_ptr(), weight.scale.data_ptr(),
                                  x.data_ptr(), 0 if bias is None else bias.data_ptr(),
                                  np.int32(n), np.int32(k)))


def takes_weight_only(x: torch.Tensor | Fp8Rows) -> bool:
    """Whether x is a one-token step's 16-bit row, which the weight-only kernels multiply as
    it is (quantization.FP8_WEIGHT_ONLY_MAX_TOKENS)."""
    num_tokens = x.shape[0]
    return (isinstance(x, torch.Tensor) and 1 <= num_tokens
            and not quantizes_activations(num_tokens))


def fp8_linear_silu_and_mul(lib: KernelLibrary, x: torch.Tensor | Fp8Rows,
                            weight: Fp8Weight) -> torch.Tensor | None:
    """silu(x @ gate^T) * (x @ up^T) in one launch for a one-token step whose gate|up rows
    the epilogue's CTAs divide evenly; else None (the caller runs the two kernels)."""
    if not takes_weight_only(x) or weight.shape[0] % (2 * W8A16_SILU_COLUMNS):
        return None
    out = torch.empty((x.shape[0], weight.shape[0] // 2), dtype=x.dtype, device=x.device)
    gemv_w8a16_into(lib, out, x.contiguous(), weight, silu_and_mul=True)
    return out


def fp8_linear(lib: KernelLibrary, x: torch.Tensor | Fp8Rows, weight: Fp8Weight,
               bias: torch.Tensor | None = None, *, gemv_max_tokens: int = 0) -> torch.Tensor:
    """x [T, K] bfloat16 (quantized here, or given as Fp8Rows) @ weight [N, K]^T (+ bias)
    -> [T, N] bfloat16; steps of up to gemv_max_tokens tokens on the FP8 GEMV, one-token
    steps given x 16-bit on the weight-only one."""
    num_rows, k = x.shape
    if weight.shape[1] != k:
        raise KernelArgumentError(f"x has {k} columns but the weight takes {weight.shape[1]}")
    if takes_weight_only(x):
        out = torch.empty((num_rows, weight.shape[0]), dtype=x.dtype, device=x.device)
        gemv_w8a16_into(lib, out, x.contiguous(), weight, bias)
        return out
    if isinstance(x, Fp8Rows):
        q, scale, device = x.q, x.scale, x.q.device
    else:
        device = x.device
        q = torch.empty((num_rows, k), dtype=FP8_DTYPE, device=device)
        scale = torch.empty((num_rows, 1), dtype=torch.float32, device=device)
        quantize_fp8_rows_into(lib, q, scale, x)
    if 1 <= num_rows <= min(gemv_max_tokens, FP8_MMA_GEMV_MAX_TOKENS):
        out = torch.empty((num_rows, weight.shape[0]), dtype=torch.bfloat16, device=device)
        gemv_fp8_into(lib, out, q, scale, weight, bias)
        return out
    # The weight's transpose is the column-major [K, N] operand the FP8 GEMM wants.
    out = torch._scaled_mm(q, weight.data.t(), scale_a=scale, scale_b=weight.scale.view(1, -1),
                           out_dtype=x.dtype)
    if bias is not None:
        out += bias
    return out
