"""Checked launches of the LayerNorm and GELU kernels (csrc/layer_norm.cu, csrc/gelu.cu)
into caller-provided outputs, for the families beyond Llama's RMSNorm and SiLU."""

from __future__ import annotations

import numpy as np
import torch

from server.engine.gpu.kernel_args import (KernelArgumentError, check_contiguous, check_device,
                                       check_dtype, check_shape, dtype_suffix, row_stride)
from server.engine.gpu.kernels import KernelLibrary
from server.engine.ops.cuda_launch import GELU_KERNELS, norm_threads, norm_vec


def layer_norm_into(lib: KernelLibrary, out: torch.Tensor, x: torch.Tensor,
                    weight: torch.Tensor, bias: torch.Tensor | None, eps: float, *,
                    residual: torch.Tensor | None = None,
                    summed: torch.Tensor | None = None) -> None:
    """out = layer_norm(x) * weight + bias; with residual, of x + residual rounded to the
    dtype, which also goes to summed. bias None: no bias (MPT)."""
    if (residual is None) != (summed is None):
        raise KernelArgumentError("give residual and summed together, or neither")
    fused = residual is not None
    tensors = {"x": x, "weight": weight, "out": out, "bias": bias, "residual": residual,
               "summed": summed}
    given = {name: t for name, t in tensors.items() if t is not None}
    check_device(lib.device, **given)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, **{name: t for name, t in given.items() if name != "x"})
    check_shape("x", x, (None, None))
    num_rows, hidden = x.shape
    for name in ("weight", "bias"):
        if tensors[name] is not None:
            check_shape(name, tensors[name], (hidden,))
    for name in ("out", "residual", "summed"):
        if tensors[name] is not None:
            check_shape(name, tensors[name], (num_rows, hidden))
    check_contiguous(**{name: t for name, t in given.items()
                        if name in ("weight", "bias", "out", "summed")})
    x_stride = row_stride("x", x)
    residual_stride = row_stride("residual", residual) if fused else 0
    aligned = [(x, x_stride), (out, hidden), (weight, hidden)]
    aligned += [(bias, hidden)] if bias is not None else []
    aligned += [(residual, residual_stride), (summed, hidden)] if fused else []
    vec = norm_vec(hidden, *aligned)
    threads = norm_threads(hidden, vec)
    if num_rows == 0:
        return
    bias_ptr = bias.data_ptr() if bias is not None else 0
    if fused:
        lib.launch("layer_norm", f"add_layer_norm_{suffix}_vec{vec}", grid=(num_rows,),
                   block=(threads,),
                   args=(out.data_ptr(), summed.data_ptr(), x.data_ptr(), residual.data_ptr(),
                         weight.data_ptr(), bias_ptr, np.int32(hidden), np.int64(x_stride),
                         np.int64(residual_stride), np.float32(eps)))
        return
    lib.launch("layer_norm", f"layer_norm_{suffix}_vec{vec}", grid=(num_rows,),
               block=(threads,),
               args=(out.data_ptr(), x.data_ptr(), weight.data_ptr(), bias_ptr,
                     np.int32(hidden), np.int64(x_stride), np.float32(eps)))


def gelu_into(lib: KernelLibrary, out: torch.Tensor, x: torch.Tensor, kind: str, *,
              gated: bool) -> None:
    """gated: out [T, d] = gelu(x[:, :d]) * x[:, d:] for x [T, 2d] (GeGLU); else out =
    gelu(x). kind: "gelu" (exact) or "gelu_tanh"."""
    if kind not in GELU_KERNELS:
        raise KernelArgumentError(f"gelu kind must be one of {', '.join(GELU_KERNELS)}, "
                                  f"got {kind!r}")
    check_device(lib.device, x=x, out=out)
    suffix = dtype_suffix("x", x)
    check_dtype(x.dtype, out=out)
    check_shape("x", x, (None, None))
    num_rows, width = x.shape
    if gated and width % 2:
        raise KernelArgumentError(f"x must have an even last dim (gate and up), got {width}")
    d = width // 2 if gated else width
    check_shape("out", out, (num_rows, d))
    check_contiguous(out=out)
    x_stride = row_stride("x", x)
    vec = norm_vec(d, (x, x_stride), (out, d), *([(x[:, d:], x_stride)] if gated else []))
    chunks = -(-d // vec)
    threads = min(256, -(-chunks // 32) * 32)
    column_blocks = -(-chunks // threads)
    if num_rows == 0 or d == 0:
        return
    name = f"gelu_{GELU_KERNELS[kind]}{'_and_mul' if gated else ''}_{suffix}_vec{vec}"
    lib.launch("gelu", name, grid=(num_rows, column_blocks), block=(threads,),
               args=(out.data_ptr(), x.data_ptr(), np.int32(d), np.int64(x_stride)))
