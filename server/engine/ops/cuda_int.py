"""Integer-weight linear layers on the GPU (IntWeight: W4A16, W8A16, W8A8).

W4A16 and W8A16 (csrc/gemv_int.cu, csrc/dequantize_int.cu): steps of up to
INT_GEMV_MAX_TOKENS tokens stream the packed weights through the GEMV (dequantized in
registers, tensor-core products); larger steps dequantize the weight into a dense scratch
matrix and hand it to cuBLAS. W8A8 (csrc/w8a8.cu): each token's activations are quantized
to int8 with one scale, then the int8 GEMV (small steps) or torch._int_mm followed by the
scale epilogue. Scratch tensors come from torch's allocator, so every path records into a
CUDA graph (the graph's pool owns them) and none waits on the host. A weight or activation
the kernels cannot take (int_kernel_problem says why) runs on int_linear_reference instead:
right, not fast.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from server.engine.gpu.kernel_args import (KernelArgumentError, check_aligned16, check_contiguous,
                                           check_device, check_dtype, check_shape, dtype_suffix,
                                           is_aligned16, row_stride)
from server.engine.gpu.kernels import KernelLibrary
from server.engine.models.int_weights import IntWeight
from server.engine.ops.cuda_fp8 import launch_row_quantizer

INT_GEMV_MAX_TOKENS = 16  # two tiles of 8 tokens (the MMA's N) in csrc/gemv_int.cu
INT_GEMV_COLUMNS = 16  # output columns per CTA (kIntGemvColumns, the MMA's M)
INT_GEMV_TILE_TOKENS = 8  # a tile of tokens: the MMA's N
INT_GEMV_SILU_MAX_TOKENS = INT_GEMV_TILE_TOKENS  # the _silu kernels take one tile
INT_GEMV_THREADS = 256  # 8 warps splitting K
# one group per 4-chunk block of K: the _bs kernels scale each block's sums once
INT_GEMV_BLOCK_COLUMNS = {4: 128, 8: 64}
PER_CHANNEL_SHIFT = 31  # group_shift that puts every column of a row in group 0
DEQUANTIZE_THREADS = 256
EPILOGUE_THREADS = 256
INT_MM_MIN_ROWS = 17  # torch._int_mm wants more than 16 rows of A ...
INT_MM_DIM_MULTIPLE = 8  # ... and K, N multiples of 8
INT8_INV_MAX = 1.0 / 127.0  # as a float32 multiplier, like the kernel's constant
MIN_ABS_MAX = 1e-12  # a row of zeros gets this absmax, so its scale is never 0


def chunk_values(bits: int) -> int:
    """Weights in a 16-byte chunk of a packed row: what K and the groups are cut in."""
    return 128 // bits


def int_kernel_problem(weight: IntWeight, dtype: torch.dtype) -> str | None:
    """Why the kernels cannot run this weight on activations of `dtype` (None: they can)."""
    n, k = weight.shape
    values = chunk_values(weight.bits)
    group = weight.group_size
    tensors = [weight.qweight, weight.scales] + ([weight.zeros] if weight.zeros is not None else [])
    if dtype not in (torch.bfloat16, torch.float16):
        return f"activations in {dtype}"
    if any(t.dtype != dtype for t in tensors[1:]):
        return f"scales or zeros in {weight.scales.dtype}, activations in {dtype}"
    if k % values or (group != k and (group % values or group & (group - 1))):
        return (f"K={k} and group size {group} (the kernels take K a multiple of {values}, "
                f"groups of a power of two times {values} or of K)")
    if not all(t.is_contiguous() for t in tensors) or weight.qweight.data_ptr() % 16:
        return "weight tensors not contiguous or not 16-byte aligned"
    if n * k // values >= 2**31:  # the GEMV indexes 16-byte chunks in 32 bits
        return f"a weight of {n} x {k}: more than 2^31 chunks"
    if weight.act_int8 and (group != k or k % 16 or n % INT_MM_DIM_MULTIPLE):
        return f"W8A8 with group size {group}, K={k}, N={n} (per channel, K % 16, N % 8 only)"
    return None


def _check_weight(lib: KernelLibrary, weight: IntWeight, dtype: torch.dtype) -> None:
    problem = int_kernel_problem(weight, dtype)
    if problem is not None:
        raise KernelArgumentError(f"the integer kernels cannot take {problem}")
    check_device(lib.device, qweight=weight.qweight, scales=weight.scales)
    if weight.zeros is not None:
        check_device(lib.device, zeros=weight.zeros)


def _check_bias(lib: KernelLibrary, bias: torch.Tensor | None, dtype: torch.dtype, n: int) -> int:
    """The bias pointer (0 for none) after checking it."""
    if bias is None:
        return 0
    check_device(lib.device, bias=bias)
    check_dtype(dtype, bias=bias)
    check_shape("bias", bias, (n,))
    check_contiguous(bias=bias)
    return bias.data_ptr()


def _pointer(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def gemv_int_into(lib: KernelLibrary, y: torch.Tensor, x: torch.Tensor, weight: IntWeight,
                  bias: torch.Tensor | None = None, *, block_scale: bool | None = None,
                  silu_and_mul: bool = False) -> None:
    """y [M, N] = x [M, K] @ weight^T (+ bias) for a W4A16 or W8A16 weight, M <= 16.
    block_scale: scale each block's sums (the _bs kernels: groups of at least a block of K)
    rather than each weight; None: wherever the groups allow it and it costs no wave of
    CTAs. silu_and_mul: the weight is a gated MLP's gate|up (N = 2d rows) and y [M, d] its
    SiLU-and-mul (M <= 8, no bias)."""
    check_device(lib.device, x=x, y=y)
    suffix = dtype_suffix("x", x)
    _check_weight(lib, weight, x.dtype)
    if weight.act_int8:
        raise KernelArgumentError("a W8A8 weight multiplies int8 rows: gemv_w8a8_into")
    check_dtype(x.dtype, y=y)
    check_shape("x", x, (None, None))
    num_rows, k = x.shape
    n = weight.shape[0]
    if not 1 <= num_rows <= INT_GEMV_MAX_TOKENS:
        raise KernelArgumentError(f"gemv_int takes 1 to {INT_GEMV_MAX_TOKENS} rows, got {num_rows}")
    check_shape("weight", weight.qweight, (n, k * weight.bits // 8))
    if silu_and_mul and (num_rows > INT_GEMV_SILU_MAX_TOKENS or n % 2 or bias is not None):
        raise KernelArgumentError(f"gemv_int's SiLU-and-mul takes 1 to {INT_GEMV_SILU_MAX_TOKENS} "
                                  f"rows, an even N ({n}) and no bias")
    check_shape("y", y, (num_rows, n // 2 if silu_and_mul else n))
    check_contiguous(y=y)
    x_stride = row_stride("x", x)
    check_aligned16("x", x, x_stride)
    if (num_rows - 1) * x_stride + k >= 2**31:  # the kernel's x offsets are 32-bit
        raise KernelArgumentError(f"x spans more than 2^31 elements (row stride {x_stride})")
    bias_ptr = _check_bias(lib, bias, x.dtype, n)
    group = weight.group_size
    shift = PER_CHANNEL_SHIFT if group == k else group.bit_length() - 1
    block_scale_fits = group == k or group >= INT_GEMV_BLOCK_COLUMNS[weight.bits]
    if block_scale and not block_scale_fits:
        raise KernelArgumentError(f"groups of {group} columns are narrower than a block of K "
                                  f"({INT_GEMV_BLOCK_COLUMNS[weight.bits]})")
    tiles = 1 if num_rows <= INT_GEMV_TILE_TOKENS else 2

    def name(with_block_scale: bool) -> str:
        return (f"gemv_w{weight.bits}_{suffix}_t{tiles}{'_bs' if with_block_scale else ''}"
                f"{'_silu' if silu_and_mul else ''}")

    # a CTA: 16 columns, or (silu_and_mul) 8 outputs, each a gate row and an up row
    outputs_per_cta = INT_GEMV_COLUMNS // 2 if silu_and_mul else INT_GEMV_COLUMNS
    num_ctas = -(-y.shape[1] // outputs_per_cta)
    if block_scale is None:
        block_scale = block_scale_fits and _block_scale_pays(lib, num_ctas=num_ctas,
                                                             block_scaled=name(True),
                                                             scaled_each=name(False))
    lib.launch("gemv_int", name(block_scale),
               grid=(num_ctas,), block=(INT_GEMV_THREADS,),
               args=(y.data_ptr(), weight.qweight.data_ptr(), weight.scales.data_ptr(),
                     _pointer(weight.zeros), x.data_ptr(), bias_ptr, np.int32(num_rows),
                     np.int32(n), np.int32(k), np.int32(shift), np.int64(x_stride)))


def _gemv_rows(x: torch.Tensor) -> torch.Tensor:
    """x with 16-byte aligned, unit-stride rows, as the GEMVs read them (K is a multiple of
    16: a fresh copy's rows are aligned)."""
    return x if is_aligned16(x, x.stride(0)) and x.stride(1) == 1 else x.contiguous()


def _block_scale_pays(lib: KernelLibrary, *, num_ctas: int, block_scaled: str,
                      scaled_each: str) -> bool:
    """Whether the _bs kernel should run where both could. It saves a multiply per weight
    pair but holds more registers (at one tile of tokens 2 CTAs an SM where the other fits
    3), so it loses where that costs a wave of CTAs: bench/int_gemv.py (H100, Llama-3-8B,
    int4 g128, 1 token): qkv's 384 CTAs 8.9 us with it, 7.6 without; gate_up's 1,792 27.8
    and 27.1; o's and down's 256 (one wave either way) 5.7 / 6.6 and 14.5 / 17.5."""
    def waves(kernel: str) -> int:
        slots = lib.num_sms * lib.max_active_ctas("gemv_int", kernel, INT_GEMV_THREADS)
        return -(-num_ctas // slots)

    return waves(block_scaled) <= waves(scaled_each)


def dequantize_int_into(lib: KernelLibrary, out: torch.Tensor, weight: IntWeight) -> None:
    """out [N, K] = weight.dequantize(out.dtype), bit for bit (W4A16, W8A16, W8A8 weights)."""
    check_device(lib.device, out=out)
    suffix = dtype_suffix("out", out)
    _check_weight(lib, weight, out.dtype)
    check_shape("out", out, weight.shape)
    check_contiguous(out=out)
    n, k = weight.shape
    num_chunks = n * k // chunk_values(weight.bits)
    if num_chunks == 0:
        return
    lib.launch("dequantize_int", f"dequantize_w{weight.bits}_{suffix}",
               grid=(-(-num_chunks // DEQUANTIZE_THREADS),), block=(DEQUANTIZE_THREADS,),
               args=(out.data_ptr(), weight.qweight.data_ptr(), weight.scales.data_ptr(),
                     _pointer(weight.zeros), np.int32(k), np.int32(weight.group_size),
                     np.int64(num_chunks)))


def quantize_int8_rows_into(lib: KernelLibrary, q: torch.Tensor, scale: torch.Tensor,
                            x: torch.Tensor) -> None:
    """q [R, K] int8 and scale [R, 1] float32 with x ~= q * scale, row by row
    (quantize_int8_rows_reference, bit for bit). q and scale may be the first R rows of
    taller buffers (padding for torch._int_mm)."""
    launch_row_quantizer(lib, ("w8a8", "quantize_int8_rows"), q, scale, x, q_dtype=torch.int8,
                         k_multiple=8, what="int8")


def _check_w8a8(lib: KernelLibrary, y: torch.Tensor, x_scale: torch.Tensor, weight: IntWeight,
                num_rows: int) -> str:
    """The dtype suffix, after the checks the two W8A8 output kernels share."""
    check_device(lib.device, y=y, x_scale=x_scale)
    suffix = dtype_suffix("y", y)
    _check_weight(lib, weight, y.dtype)
    if not weight.act_int8:
        raise KernelArgumentError("the W8A8 kernels take an IntWeight with act_int8")
    check_dtype(torch.float32, x_scale=x_scale)
    check_shape("y", y, (num_rows, weight.shape[0]))
    check_contiguous(y=y, x_scale=x_scale)
    if x_scale.numel() < num_rows:
        raise KernelArgumentError(f"x_scale has {x_scale.numel()} rows, y {num_rows}")
    return suffix


def gemv_w8a8_into(lib: KernelLibrary, y: torch.Tensor, q: torch.Tensor, x_scale: torch.Tensor,
                   weight: IntWeight, bias: torch.Tensor | None = None) -> None:
    """y [M, N] = (q [M, K] * x_scale) @ (weight)^T (+ bias) for M <= 16, W8A8."""
    num_rows, k = q.shape
    suffix = _check_w8a8(lib, y, x_scale, weight, num_rows)
    check_device(lib.device, q=q)
    check_dtype(torch.int8, q=q)
    check_shape("q", q, (num_rows, weight.shape[1]))
    check_contiguous(q=q)
    check_aligned16("q", q, k)
    if not 1 <= num_rows <= INT_GEMV_MAX_TOKENS:
        raise KernelArgumentError(f"gemv_w8a8 takes 1 to {INT_GEMV_MAX_TOKENS} rows, "
                                  f"got {num_rows}")
    n = weight.shape[0]
    bias_ptr = _check_bias(lib, bias, y.dtype, n)
    lib.launch("w8a8", f"gemv_w8a8_{suffix}_t{1 if num_rows <= 8 else 2}",
               grid=(-(-n // INT_GEMV_COLUMNS),), block=(INT_GEMV_THREADS,),
               args=(y.data_ptr(), weight.qweight.data_ptr(), weight.scales.data_ptr(),
                     q.data_ptr(), x_scale.data_ptr(), bias_ptr, np.int32(num_rows),
                     np.int32(n), np.int32(k)))


def int8_scaled_out_into(lib: KernelLibrary, y: torch.Tensor, acc: torch.Tensor,
                         x_scale: torch.Tensor, weight: IntWeight,
                         bias: torch.Tensor | None = None) -> None:
    """y [M, N] = acc[:M] (int32) * x_scale[:M] * weight's channel scales (+ bias)."""
    num_rows, n = y.shape
    suffix = _check_w8a8(lib, y, x_scale, weight, num_rows)
    check_device(lib.device, acc=acc)
    check_dtype(torch.int32, acc=acc)
    check_contiguous(acc=acc)
    if acc.dim() != 2 or acc.shape[1] != n or acc.shape[0] < num_rows:
        raise KernelArgumentError(f"acc {list(acc.shape)} does not cover y {list(y.shape)}")
    bias_ptr = _check_bias(lib, bias, y.dtype, n)
    if num_rows == 0:
        return
    lib.launch("w8a8", f"int8_scaled_out_{suffix}",
               grid=(-(-n // (4 * EPILOGUE_THREADS)), num_rows), block=(EPILOGUE_THREADS,),
               args=(y.data_ptr(), acc.data_ptr(), x_scale.data_ptr(), weight.scales.data_ptr(),
                     bias_ptr, np.int32(n)))


def int_linear(lib: KernelLibrary, x: torch.Tensor, weight: IntWeight,
               bias: torch.Tensor | None = None, *,
               gemv_max_tokens: int = INT_GEMV_MAX_TOKENS) -> torch.Tensor:
    """x [T, K] @ weight [N, K]^T (+ bias) -> [T, N] in x's dtype: the GEMV for
    1..gemv_max_tokens tokens, dequantize + cuBLAS (W8A8: torch._int_mm) for more."""
    num_rows, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k:
        raise KernelArgumentError(f"x has {k} columns but the weight takes {weight.shape[1]}")
    if int_kernel_problem(weight, x.dtype) is not None:
        return int_linear_reference(x, weight, bias)
    if num_rows == 0:
        return torch.empty((0, n), dtype=x.dtype, device=x.device)
    x = _gemv_rows(x)
    use_gemv = num_rows <= min(gemv_max_tokens, INT_GEMV_MAX_TOKENS)
    if weight.act_int8:
        return _w8a8_linear(lib, x, weight, bias, use_gemv=use_gemv)
    if use_gemv:
        out = torch.empty((num_rows, n), dtype=x.dtype, device=x.device)
        gemv_int_into(lib, out, x, weight, bias)
        return out
    dense = torch.empty((n, k), dtype=x.dtype, device=x.device)
    dequantize_int_into(lib, dense, weight)
    return F.linear(x, dense, bias)


def int_linear_silu_and_mul(lib: KernelLibrary, x: torch.Tensor, weight: IntWeight
                            ) -> torch.Tensor | None:
    """silu_and_mul(x @ weight^T) [T, N / 2] in one launch where the _silu GEMV takes it
    (W4A16 / W8A16, 1 to INT_GEMV_SILU_MAX_TOKENS tokens); None where it does not."""
    num_rows, k = x.shape
    if (weight.act_int8 or not 1 <= num_rows <= INT_GEMV_SILU_MAX_TOKENS or weight.shape[0] % 2
            or weight.shape[1] != k or int_kernel_problem(weight, x.dtype) is not None):
        return None
    x = _gemv_rows(x)
    out = torch.empty((num_rows, weight.shape[0] // 2), dtype=x.dtype, device=x.device)
    gemv_int_into(lib, out, x, weight, silu_and_mul=True)
    return out


def _w8a8_linear(lib: KernelLibrary, x: torch.Tensor, weight: IntWeight,
                 bias: torch.Tensor | None, *, use_gemv: bool) -> torch.Tensor:
    num_rows, k = x.shape
    out = torch.empty((num_rows, weight.shape[0]), dtype=x.dtype, device=x.device)
    # torch._int_mm's rows past the step's (padding) hold whatever the allocator gave;
    # their sums are never read
    rows = num_rows if use_gemv else max(num_rows, INT_MM_MIN_ROWS)
    q = torch.empty((rows, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    quantize_int8_rows_into(lib, q[:num_rows], scale[:num_rows], x)
    if use_gemv:
        gemv_w8a8_into(lib, out, q, scale, weight, bias)
    else:
        acc = torch._int_mm(q, weight.qweight.t())
        int8_scaled_out_into(lib, out, acc, scale, weight, bias)
    return out


def quantize_int8_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise int8 of a 2-D tensor: (q [R, C] int8, scale [R, 1] float32), x ~= q * scale;
    csrc/w8a8.cu's quantize_int8_rows computes exactly this."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=MIN_ABS_MAX) * INT8_INV_MAX
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


def int_linear_reference(x: torch.Tensor, weight: IntWeight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """What the kernels compute, in torch: the dequantized weight's product for W4A16 and
    W8A16; for W8A8, int8 activations times int8 weights summed exactly per group, then
    scaled in float32."""
    if not weight.act_int8:
        return F.linear(x, weight.dequantize(x.dtype), bias)
    q, scale = quantize_int8_rows_reference(x)
    n, k = weight.shape
    groups = k // weight.group_size
    # [T, G, gs] x [N, G, gs] -> [T, N, G]: exact in float64 (sums stay below 2^53)
    sums = torch.einsum("tgk,ngk->tng", q.double().view(-1, groups, weight.group_size),
                        weight.qweight.double().view(n, groups, weight.group_size))
    if groups == 1:  # the kernels' order: int32 sum as float32, times row, times channel
        out = sums[..., 0].float() * scale * weight.scales.float().view(1, n)
    else:
        out = (sums * weight.scales.double().view(1, n, groups)).sum(-1).float() * scale
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
