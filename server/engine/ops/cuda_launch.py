"""Checked launches of the elementwise kernels (norms, SiLU-and-mul, rotary + cache write)
into caller-provided outputs. CudaOps allocates the outputs; tests pass poisoned ones.

Inputs may be row views (e.g. q, k, v split out of one fused projection): every dim but the
first must be contiguous. Outputs must be contiguous.
"""

from __future__ import annotations

import numpy as np
import torch

from server.engine.gpu.kernel_args import (KernelArgumentError, check_aligned16, check_contiguous,
                                       check_device, check_dtype, check_shape, dtype_suffix,
                                       is_aligned16, kv_cache_suffix, row_stride)
from server.engine.gpu.kernels import KernelLibrary

NORM_ITEMS = 4  # row chunks each thread keeps in registers (csrc/rms_norm.cu ITEMS)
MAX_THREADS = 1024


# the model's GELU (ModelArchConfig.activation) -> the kernels' name for it (csrc/gelu.cuh;
# "gelu" is the exact, erf form)
GELU_KERNELS = {"gelu": "erf", "gelu_tanh": "tanh"}


def norm_threads(hidden: int, vec: int) -> int:
    chunks = -(-hidden // vec)
    threads = min(MAX_THREADS, -(-chunks // 32) * 32)
    if chunks > NORM_ITEMS * threads:
        raise KernelArgumentError(
            f"rms_norm supports rows of up to {NORM_ITEMS * vec * MAX_THREADS} elements "
            f"here, got {hidden}")
    return threads


def norm_vec(hidden: int, *tensors_and_strides: tuple[torch.Tensor, int]) -> int:
    if hidden % 8 == 0 and all(is_aligned16(t, s) for t, s in tensors_and_strides):
        return 8
    return 1


def rms_norm_into(lib: KernelLibrary, out: torch.Tensor, x: torch.Tensor,
                  weight: torch.Tensor, eps: float) -> None:
    check_device(lib.device, x=x, weight=weight, out=out)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, weight=weight, out=out)
    check_shape("x", x, (None, None))
    num_rows, hidden = x.shape
    check_shape("weight", weight, (hidden,))
    check_shape("out", out, (num_rows, hidden))
    check_contiguous(weight=weight, out=out)
    x_stride = row_stride("x", x)
    vec = norm_vec(hidden, (x, x_stride), (out, hidden), (weight, hidden))
    threads = norm_threads(hidden, vec)
    if num_rows == 0:
        return
    lib.launch("rms_norm", f"rms_norm_{suffix}_vec{vec}", grid=(num_rows,), block=(threads,),
               args=(out.data_ptr(), x.data_ptr(), weight.data_ptr(), np.int32(hidden),
                     np.int64(x_stride), np.float32(eps)))


def add_rms_norm_into(lib: KernelLibrary, out: torch.Tensor, summed: torch.Tensor,
                      x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                      eps: float) -> None:
    """out = rms_norm(x + residual) * weight; summed = x + residual (rounded to the dtype)."""
    check_device(lib.device, x=x, residual=residual, weight=weight, out=out, summed=summed)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, residual=residual, weight=weight, out=out, summed=summed)
    check_shape("x", x, (None, None))
    num_rows, hidden = x.shape
    for name, tensor in (("residual", residual), ("out", out), ("summed", summed)):
        check_shape(name, tensor, (num_rows, hidden))
    check_shape("weight", weight, (hidden,))
    check_contiguous(weight=weight, out=out, summed=summed)
    x_stride = row_stride("x", x)
    residual_stride = row_stride("residual", residual)
    vec = norm_vec(hidden, (x, x_stride), (residual, residual_stride), (out, hidden),
                    (summed, hidden), (weight, hidden))
    threads = norm_threads(hidden, vec)
    if num_rows == 0:
        return
    lib.launch("rms_norm", f"add_rms_norm_{suffix}_vec{vec}", grid=(num_rows,), block=(threads,),
               args=(out.data_ptr(), summed.data_ptr(), x.data_ptr(), residual.data_ptr(),
                     weight.data_ptr(), np.int32(hidden), np.int64(x_stride),
                     np.int64(residual_stride), np.float32(eps)))


def silu_and_mul_into(lib: KernelLibrary, out: torch.Tensor, x: torch.Tensor) -> None:
    """out [T, d] = silu(x[:, :d]) * x[:, d:] for x [T, 2d]."""
    check_device(lib.device, x=x, out=out)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, out=out)
    check_shape("x", x, (None, None))
    num_rows, width = x.shape
    if width % 2:
        raise KernelArgumentError(f"x must have an even last dim (gate and up), got {width}")
    d = width // 2
    check_shape("out", out, (num_rows, d))
    check_contiguous(out=out)
    x_stride = row_stride("x", x)
    vec = norm_vec(d, (x, x_stride), (out, d))
    chunks = -(-d // vec)
    threads = min(256, -(-chunks // 32) * 32)
    column_blocks = -(-chunks // threads)
    if num_rows == 0 or d == 0:
        return
    lib.launch("activation", f"silu_and_mul_{suffix}_vec{vec}", grid=(num_rows, column_blocks),
               block=(threads,), args=(out.data_ptr(), x.data_ptr(), np.int32(d),
                                       np.int64(x_stride)))


def rope_and_cache_into(lib: KernelLibrary, q_out: torch.Tensor, k_out: torch.Tensor,
                        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                        slot_mapping: torch.Tensor) -> None:
    """Rotates q, k into q_out, k_out and writes rotated k and v into kv_cache[:, slot]."""
    check_device(lib.device, q=q, k=k, v=v, positions=positions, cos_sin=cos_sin,
                 kv_cache=kv_cache, slot_mapping=slot_mapping, q_out=q_out, k_out=k_out)
    suffix = dtype_suffix("q", q)
    check_dtype(q.dtype, k=k, v=v, q_out=q_out, k_out=k_out)
    cache = kv_cache_suffix(kv_cache, q.dtype)
    check_dtype(torch.int64, positions=positions, slot_mapping=slot_mapping)
    if cos_sin.dtype not in (q.dtype, torch.float32):
        raise KernelArgumentError(f"cos_sin must be {q.dtype} or float32, got {cos_sin.dtype}")
    check_shape("q", q, (None, None, None))
    num_tokens, num_heads, head_dim = q.shape
    check_shape("kv_cache", kv_cache, (2, None, None, None, head_dim))
    num_kv_heads = kv_cache.shape[3]
    if head_dim % 16:
        raise KernelArgumentError(f"rope_and_cache needs head_dim % 16 == 0, got {head_dim}")
    for name, tensor, heads in (("k", k, num_kv_heads), ("v", v, num_kv_heads),
                                ("q_out", q_out, num_heads), ("k_out", k_out, num_kv_heads)):
        check_shape(name, tensor, (num_tokens, heads, head_dim))
    check_shape("positions", positions, (num_tokens,))
    check_shape("slot_mapping", slot_mapping, (num_tokens,))
    check_shape("cos_sin", cos_sin, (None, head_dim))
    check_contiguous(q_out=q_out, k_out=k_out, kv_cache=kv_cache, cos_sin=cos_sin,
                     positions=positions, slot_mapping=slot_mapping)
    strides = {name: row_stride(name, t) for name, t in (("q", q), ("k", k), ("v", v))}
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_aligned16(name, tensor, strides[name])
    check_aligned16("cos_sin", cos_sin, head_dim)
    check_aligned16("kv_cache", kv_cache, head_dim)
    if num_tokens == 0:
        return
    cos = "" if cos_sin.dtype == q.dtype else "_f32cos"
    rotations = (num_heads + num_kv_heads) * (head_dim // 16)
    lib.launch("rope_cache", f"rope_and_cache_{suffix}{cos}{cache}", grid=(num_tokens,),
               block=(min(256, -(-rotations // 32) * 32),),
               args=(q_out.data_ptr(), k_out.data_ptr(), kv_cache.data_ptr(), q.data_ptr(),
                     k.data_ptr(), v.data_ptr(), positions.data_ptr(), cos_sin.data_ptr(),
                     slot_mapping.data_ptr(), np.int32(num_heads), np.int32(num_kv_heads),
                     np.int32(head_dim), np.int64(strides["q"]), np.int64(strides["k"]),
                     np.int64(strides["v"]), np.int64(kv_cache.shape[1] * kv_cache.shape[2]),
                     np.int64(cos_sin.shape[0])))


GEMV_MAX_TOKENS = 4  # csrc/gemv.cu and gemv_fp8.cu have kernels for 1 to 4 rows of x
GEMV_COLUMNS_PER_CTA = 8  # kGemvWarps (csrc/common.cuh)


def gemv_supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether gemv_into takes these (else the caller uses F.linear)."""
    return (x.dim() == 2 and 1 <= x.shape[0] <= GEMV_MAX_TOKENS and x.dtype == weight.dtype
            and x.dtype in (torch.bfloat16, torch.float16) and weight.is_contiguous()
            and x.shape[1] % 8 == 0 and x.stride(1) == 1
            and is_aligned16(x, x.stride(0)) and is_aligned16(weight, weight.shape[1]))


def gemv_into(lib: KernelLibrary, y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None = None, *, gelu: str | None = None) -> None:
    """y [M, N] = x [M, K] @ weight [N, K]^T (+ bias), for M <= GEMV_MAX_TOKENS; with gelu
    ("gelu" or "gelu_tanh"), that GELU of it, bit for bit gelu_into's on the unfused output.
    y is x's dtype, or float32 (unrounded: the logits) without gelu."""
    if gelu is not None and gelu not in GELU_KERNELS:
        raise KernelArgumentError(f"gemv's gelu must be one of {', '.join(GELU_KERNELS)} or "
                                  f"None, got {gelu!r}")
    check_device(lib.device, x=x, weight=weight, y=y)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, weight=weight)
    float32_out = y.dtype == torch.float32 and gelu is None
    if not float32_out:
        check_dtype(x.dtype, y=y)
    check_shape("x", x, (None, None))
    num_rows, k = x.shape
    if not 1 <= num_rows <= GEMV_MAX_TOKENS:
        raise KernelArgumentError(f"gemv takes 1 to {GEMV_MAX_TOKENS} rows of x, got {num_rows}")
    check_shape("weight", weight, (None, k))
    n = weight.shape[0]
    check_shape("y", y, (num_rows, n))
    check_contiguous(weight=weight, y=y)
    if bias is not None:
        check_device(lib.device, bias=bias)
        check_dtype(x.dtype, bias=bias)
        check_shape("bias", bias, (n,))
        check_contiguous(bias=bias)
    x_stride = row_stride("x", x)
    if k % 8 or not (is_aligned16(x, x_stride) and is_aligned16(weight, k)):
        raise KernelArgumentError(f"gemv needs K a multiple of 8 ({k}) and 16-byte aligned "
                                  "rows of x and weight")
    act = "_logits" if float32_out else "" if gelu is None else f"_gelu_{GELU_KERNELS[gelu]}"
    lib.launch("gemv", f"gemv{act}_{suffix}_m{num_rows}",
               grid=(-(-n // GEMV_COLUMNS_PER_CTA),), block=(32 * GEMV_COLUMNS_PER_CTA,),
               args=(y.data_ptr(), weight.data_ptr(), x.data_ptr(),
                     0 if bias is None else bias.data_ptr(), np.int32(n), np.int32(k),
                     np.int64(x_stride)))


def apply_token_bitmask_into(lib: KernelLibrary, logits: torch.Tensor, bitmask: torch.Tensor,
                             rows: torch.Tensor) -> None:
    """logits [S, V] float32, in place: -inf wherever bitmask [R, W] int32 row r does not
    allow the token (tokens past 32 W: never), on logits row rows[r] (int64 [R])."""
    check_device(lib.device, logits=logits, bitmask=bitmask, rows=rows)
    if logits.dtype != torch.float32 or bitmask.dtype != torch.int32 \
            or rows.dtype != torch.int64:
        raise KernelArgumentError("apply_token_bitmask takes float32 logits, an int32 "
                                  "bitmask and int64 rows")
    check_contiguous(bitmask=bitmask, rows=rows)
    num_rows, words = bitmask.shape
    vocab = logits.shape[1]
    if rows.shape != (num_rows,) or logits.stride(1) != 1:
        raise KernelArgumentError(f"bitmask {tuple(bitmask.shape)} and rows "
                                  f"{tuple(rows.shape)} do not fit logits {tuple(logits.shape)}")
    if num_rows == 0:
        return
    lib.launch("token_bitmask", "apply_token_bitmask_f32", grid=(num_rows, -(-vocab // 256)),
               block=(256,), args=(logits.data_ptr(), bitmask.data_ptr(), rows.data_ptr(),
                                   np.int32(vocab), np.int32(words),
                                   np.int64(logits.stride(0))))


ARGMAX_THREADS = 1024  # csrc/argmax.cu's kArgmaxThreads


def argmax_into(lib: KernelLibrary, out: torch.Tensor, logits: torch.Tensor) -> None:
    """out [N] int64 = logits [N, V] float32's argmax over each row, as torch.argmax(dim=-1)
    picks it (the first of equal maxima; a NaN above every number)."""
    check_device(lib.device, out=out, logits=logits)
    if logits.dtype != torch.float32 or out.dtype != torch.int64:
        raise KernelArgumentError("argmax takes float32 logits and an int64 out")
    check_shape("logits", logits, (None, None))
    num_rows, vocab = logits.shape
    check_shape("out", out, (num_rows,))
    check_contiguous(out=out)
    if vocab == 0 or logits.stride(1) != 1:
        raise KernelArgumentError(f"argmax needs rows of at least one contiguous element, "
                                  f"got logits {tuple(logits.shape)} strides {logits.stride()}")
    if num_rows == 0:
        return
    lib.launch("argmax", "argmax_f32", grid=(num_rows,), block=(ARGMAX_THREADS,),
               args=(out.data_ptr(), logits.data_ptr(), np.int32(vocab),
                     np.int64(logits.stride(0))))
