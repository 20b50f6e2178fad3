"""Checked launches of the kernels that end in an FP8 linear layer's input (--quantization
fp8): RMSNorm (plain and with the residual add) and SiLU-and-mul, each writing its result
quantized row by row (csrc/rms_norm.cu, csrc/activation.cu "_fp8" kernels) instead of a
16-bit row that csrc/quantize.cu would read back. The results are Fp8Rows, bit for bit
Fp8Rows.of(the unfused op's output).
"""

from __future__ import annotations

import numpy as np
import torch

from server.engine.gpu.kernel_args import (KernelArgumentError, check_aligned16, check_contiguous,
                                       check_device, check_dtype, check_shape, dtype_suffix,
                                       row_stride)
from server.engine.gpu.kernels import KernelLibrary
from server.engine.ops.cuda_launch import norm_threads, norm_vec
from server.engine.models.quantization import FP8_DIM_MULTIPLE, FP8_DTYPE, Fp8Rows

SILU_FP8_ITEMS = 4  # 8-column chunks per thread (csrc/activation.cu kSiluFp8Items)
MAX_THREADS = 1024
SILU_FP8_MAX_WIDTH = SILU_FP8_ITEMS * 8 * MAX_THREADS


def empty_fp8_rows(num_rows: int, width: int, *, dtype: torch.dtype,
                   device: torch.device) -> Fp8Rows:
    return Fp8Rows(q=torch.empty((num_rows, width), dtype=FP8_DTYPE, device=device),
                   scale=torch.empty((num_rows, 1), dtype=torch.float32, device=device),
                   dtype=dtype)


def _check_rows(out: Fp8Rows, num_rows: int, width: int) -> None:
    check_dtype(FP8_DTYPE, **{"out.q": out.q})
    check_dtype(torch.float32, **{"out.scale": out.scale})
    check_shape("out.q", out.q, (num_rows, width))
    check_shape("out.scale", out.scale, (num_rows, 1))
    check_contiguous(**{"out.q": out.q, "out.scale": out.scale})
    if width % FP8_DIM_MULTIPLE:
        raise KernelArgumentError(f"FP8 rows must be a multiple of {FP8_DIM_MULTIPLE} long, "
                                  f"got {width}")


def rms_norm_fp8_into(lib: KernelLibrary, out: Fp8Rows, x: torch.Tensor,
                      weight: torch.Tensor, eps: float) -> None:
    """out = Fp8Rows.of(rms_norm(x) * weight)."""
    check_device(lib.device, x=x, weight=weight, q=out.q, scale=out.scale)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, weight=weight)
    check_shape("x", x, (None, None))
    num_rows, hidden = x.shape
    check_shape("weight", weight, (hidden,))
    check_contiguous(weight=weight)
    _check_rows(out, num_rows, hidden)
    x_stride = row_stride("x", x)
    vec = norm_vec(hidden, (x, x_stride), (weight, hidden))
    threads = norm_threads(hidden, vec)
    if num_rows == 0:
        return
    lib.launch("rms_norm", f"rms_norm_fp8_{suffix}_vec{vec}", grid=(num_rows,),
               block=(threads,),
               args=(out.q.data_ptr(), out.scale.data_ptr(), x.data_ptr(), weight.data_ptr(),
                     np.int32(hidden), np.int64(x_stride), np.float32(eps)))


def add_rms_norm_fp8_into(lib: KernelLibrary, out: Fp8Rows, summed: torch.Tensor,
                          x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                          eps: float) -> None:
    """out = Fp8Rows.of(rms_norm(x + residual) * weight); summed = x + residual."""
    check_device(lib.device, x=x, residual=residual, weight=weight, summed=summed,
                 q=out.q, scale=out.scale)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, residual=residual, weight=weight, summed=summed)
    check_shape("x", x, (None, None))
    num_rows, hidden = x.shape
    for name, tensor in (("residual", residual), ("summed", summed)):
        check_shape(name, tensor, (num_rows, hidden))
    check_shape("weight", weight, (hidden,))
    check_contiguous(weight=weight, summed=summed)
    _check_rows(out, num_rows, hidden)
    x_stride = row_stride("x", x)
    residual_stride = row_stride("residual", residual)
    vec = norm_vec(hidden, (x, x_stride), (residual, residual_stride), (summed, hidden),
                    (weight, hidden))
    threads = norm_threads(hidden, vec)
    if num_rows == 0:
        return
    lib.launch("rms_norm", f"add_rms_norm_fp8_{suffix}_vec{vec}", grid=(num_rows,),
               block=(threads,),
               args=(out.q.data_ptr(), out.scale.data_ptr(), summed.data_ptr(), x.data_ptr(),
                     residual.data_ptr(), weight.data_ptr(), np.int32(hidden),
                     np.int64(x_stride), np.int64(residual_stride), np.float32(eps)))


def silu_and_mul_fp8_into(lib: KernelLibrary, out: Fp8Rows, x: torch.Tensor) -> None:
    """out = Fp8Rows.of(silu(x[:, :d]) * x[:, d:]) for x [T, 2d], d <= SILU_FP8_MAX_WIDTH."""
    check_device(lib.device, x=x, q=out.q, scale=out.scale)
    suffix = dtype_suffix("x", x)
    check_shape("x", x, (None, None))
    num_rows, width = x.shape
    if width % 2:
        raise KernelArgumentError(f"x must have an even last dim (gate and up), got {width}")
    d = width // 2
    if d > SILU_FP8_MAX_WIDTH:
        raise KernelArgumentError(f"silu_and_mul_fp8 takes rows of up to {SILU_FP8_MAX_WIDTH} "
                                  f"outputs, got {d}")
    _check_rows(out, num_rows, d)
    x_stride = row_stride("x", x)
    check_aligned16("x", x, x_stride)
    chunks = d // 8
    threads = min(MAX_THREADS, -(-(-(-chunks // SILU_FP8_ITEMS)) // 32) * 32)
    if num_rows == 0:
        return
    lib.launch("activation", f"silu_and_mul_fp8_{suffix}", grid=(num_rows,), block=(threads,),
               args=(out.q.data_ptr(), out.scale.data_ptr(), x.data_ptr(), np.int32(d),
                     np.int64(x_stride)))
