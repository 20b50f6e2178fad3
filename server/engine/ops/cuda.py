"""CudaOps: the Ops protocol on our NVRTC-compiled kernels (csrc/).

Every method allocates its outputs with torch (so it can be recorded in a CUDA graph, whose
memory pool then owns them) and launches on torch's current stream without synchronising.
No input is modified, except kv_cache by rope_and_cache, as the protocol says; rotated q and
k come back as new contiguous tensors. The kernels are tested against TorchOps
(tests/gpu/); dtypes bfloat16 and float16, attention head_dim 64 or 128.
"""

from __future__ import annotations

import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.kernels import KernelLibrary
from server.engine.ops.cuda_attention import paged_attention_into
from server.engine.ops.cuda_launch import (add_rms_norm_into, rms_norm_into,
                                           rope_and_cache_into, silu_and_mul_into)


class CudaOps:
    """Implements `server.engine.ops.Ops` on one GPU."""

    def __init__(self, library: KernelLibrary | None = None) -> None:
        self.library = library if library is not None else KernelLibrary()

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        rms_norm_into(self.library, out, x, weight, eps)
        return out

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        summed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        add_rms_norm_into(self.library, out, summed, x, residual, weight, eps)
        return out, summed

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)
        silu_and_mul_into(self.library, out, x)
        return out

    def rope_and_cache(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        rope_and_cache_into(self.library, q_out, k_out, q, k, v, positions, cos_sin, kv_cache,
                            slot_mapping)
        return q_out, k_out

    def attention(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                  scale: float) -> torch.Tensor:
        q = q if q.is_contiguous() else q.contiguous()
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        paged_attention_into(self.library, out, q, kv_cache, metadata, scale)
        return out
