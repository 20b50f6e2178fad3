"""CudaOps: the Ops protocol on our NVRTC-compiled kernels (csrc/).

Every method allocates its outputs with torch (so it can be recorded in a CUDA graph, whose
memory pool then owns them) and launches on torch's current stream without synchronising.
No input is modified, except kv_cache by rope_and_cache, as the protocol says; rotated q and
k come back as new contiguous tensors. The kernels are tested against TorchOps
(tests/gpu/); dtypes bfloat16 and float16, attention head_dims as kernels.ATTENTION_HEAD_DIMS
lists them. LayerNorm and GELU (csrc/layer_norm.cu, csrc/gelu.cu) serve the families beyond
Llama's RMSNorm and SiLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from server.engine.attention.metadata import AttentionMetadata
from server.engine.gpu.kernels import KernelLibrary
from server.engine.ops.cuda_attention import paged_attention_into
from server.engine.ops.cuda_attention_scores import wants_extras
from server.engine.ops.cuda_decode_bulk import (decode_bulk_fits, decode_bulk_forced,
                                                decode_bulk_into)
from server.engine.ops.cuda_fp8 import (FP8_MMA_GEMV_MAX_TOKENS, fp8_linear,
                                       fp8_linear_silu_and_mul, quantize_fp8_rows_into)
from server.engine.ops.cuda_int import int_linear, int_linear_silu_and_mul
from server.engine.ops.cuda_norm_act import gelu_into, layer_norm_into
from server.engine.ops.cuda_fp8_fused import (SILU_FP8_MAX_WIDTH, add_rms_norm_fp8_into,
                                              empty_fp8_rows, rms_norm_fp8_into,
                                              silu_and_mul_fp8_into)
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import Fp8Rows, Fp8Weight, check_not_quantized
from server.engine.ops.cuda_launch import (GEMV_MAX_TOKENS, add_rms_norm_into,
                                          apply_token_bitmask_into, argmax_into, gemv_into,
                                           gemv_supports, rms_norm_into, rope_and_cache_into,
                                           silu_and_mul_into)

# Llama-3-8B's down projection (58.7M elements) is under it, gate_up (117M) and lm_head over
GEMV_MAX_WEIGHT_ELEMENTS = 64 * 2**20
# Our GEMV makes a one-token step's float32 logits for LM heads of at least this hidden size:
# it streamed them 3-36 % faster than torch.mm's float32-out product at every hidden size from
# 1,024 to 4,544, and 13-36 % slower at 576 and 896, on an H100 and an H200 alike
# (bench/gemv.py --logits, docs/benchmarks.md session 28)
LOGITS_GEMV_MIN_K = 1024
# the FP8 GEMV beats torch._scaled_mm at every Llama-3-8B shape up to 8 tokens (1.4-1.9x)
FP8_GEMV_MAX_TOKENS = 8


class CudaOps:
    """Implements `server.engine.ops.Ops` on one GPU.

    linear: one-token steps use our GEMV (csrc/gemv.cu) for weights of up to
    gemv_max_weight_elements, where it streams the weights faster than cuBLAS (on an H200,
    bench/gemv.py: 4-18 % on Llama-3-8B's qkv, o and down projections at 1 token, 1-6 %
    slower on gate_up and lm_head, and slower at 2-4 tokens); the rest goes to torch
    (cuBLAS). gemv_max_tokens=0 turns it off. FP8 weights (Fp8Weight): steps of up to
    fp8_gemv_max_tokens tokens on the FP8 GEMV (csrc/gemv_fp8.cu: the CUDA-core kernel at
    one token, the tensor-core one at 2 to 8; any weight size), the rest on the FP8 GEMM.
    Integer weights (IntWeight): ops.cuda_int.int_linear. logits: one-token steps' on our
    GEMV in float32 for hidden sizes of logits_gemv_min_k and up, the rest on torch.mm."""

    def __init__(self, library: KernelLibrary | None = None, *,
                 gemv_max_tokens: int = 1,
                 gemv_max_weight_elements: int = GEMV_MAX_WEIGHT_ELEMENTS,
                 fp8_gemv_max_tokens: int = FP8_GEMV_MAX_TOKENS,
                 logits_gemv_min_k: int = LOGITS_GEMV_MIN_K) -> None:
        if not 0 <= gemv_max_tokens <= GEMV_MAX_TOKENS:
            raise ValueError(f"gemv_max_tokens must be 0 to {GEMV_MAX_TOKENS}, "
                             f"got {gemv_max_tokens}")
        if not 0 <= fp8_gemv_max_tokens <= FP8_MMA_GEMV_MAX_TOKENS:
            raise ValueError(f"fp8_gemv_max_tokens must be 0 to {FP8_MMA_GEMV_MAX_TOKENS}, "
                             f"got {fp8_gemv_max_tokens}")
        self.fp8_gemv_max_tokens = fp8_gemv_max_tokens
        self.library = library if library is not None else KernelLibrary()
        self.gemv_max_tokens = gemv_max_tokens
        self.gemv_max_weight_elements = gemv_max_weight_elements
        self.logits_gemv_min_k = logits_gemv_min_k
        self._mm_float32_out = _has_mm_float32_out(self.library.device)
        self.decode_bulk_forced = decode_bulk_forced()  # INFLIGHTD_DECODE_BULK, read once

    def linear(self, x: torch.Tensor | Fp8Rows, weight: torch.Tensor | Fp8Weight | IntWeight,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(weight, Fp8Weight):
            return fp8_linear(self.library, x, weight, bias,
                              gemv_max_tokens=self.fp8_gemv_max_tokens)
        check_not_quantized(x)
        if isinstance(weight, IntWeight):  # csrc/gemv_int.cu, dequantize_int.cu, w8a8.cu
            return int_linear(self.library, x, weight, bias)
        if not self._takes_gemv(x, weight):
            return F.linear(x, weight, bias)
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
        gemv_into(self.library, out, x, weight, bias)
        return out

    def linear_gelu(self, x: torch.Tensor, weight: torch.Tensor | Fp8Weight | IntWeight,
                    bias: torch.Tensor | None, kind: str) -> torch.Tensor:
        """On the GEMV, GELU is its epilogue (one launch, GPT-2's ~460-kernel step had
        48 of them); elsewhere the GELU kernel after the product."""
        if isinstance(weight, torch.Tensor) and isinstance(x, torch.Tensor) \
                and self._takes_gemv(x, weight):
            out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
            gemv_into(self.library, out, x, weight, bias, gelu=kind)
            return out
        return self.gelu(self.linear(x, weight, bias), kind)

    def _takes_gemv(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        return (x.shape[0] <= self.gemv_max_tokens
                and weight.numel() <= self.gemv_max_weight_elements
                and gemv_supports(x, weight))

    def logits(self, hidden: torch.Tensor, lm_head: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Accumulated and returned in float32 (as TensorRT-LLM's default logits dtype):
        rounding logits of ~30 to 16 bits (steps of 1/64 in float16) makes exact ties of
        candidates that float32 tells apart, and argmax then picks the lower token id.
        Our GEMV writes straight into out (a CUDA graph's logits buffer: no copy after)."""
        if (hidden.shape[0] <= self.gemv_max_tokens
                and lm_head.shape[1] >= self.logits_gemv_min_k and gemv_supports(hidden, lm_head)):
            if out is None:
                out = torch.empty((hidden.shape[0], lm_head.shape[0]), dtype=torch.float32,
                                  device=hidden.device)
            gemv_into(self.library, out, hidden, lm_head)
            return out
        if self._mm_float32_out and hidden.dtype in (torch.bfloat16, torch.float16):
            logits = torch.mm(hidden, lm_head.t(), out_dtype=torch.float32)
        else:
            logits = F.linear(hidden, lm_head).float()
        return logits if out is None else out.copy_(logits)

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

    def linear_silu_and_mul(self, x: torch.Tensor,
                            weight: torch.Tensor | Fp8Weight | IntWeight) -> torch.Tensor:
        """Integer weights at 1-8 tokens, FP8 ones at one token: SiLU-and-mul is the GEMV's
        epilogue (one launch a layer fewer, a W4A16 step being a third of bf16's); else the
        two kernels."""
        fused = None
        if isinstance(weight, IntWeight) and isinstance(x, torch.Tensor):
            fused = int_linear_silu_and_mul(self.library, x, weight)
        elif isinstance(weight, Fp8Weight):
            fused = fp8_linear_silu_and_mul(self.library, x, weight)
        return fused if fused is not None else self.silu_and_mul(self.linear(x, weight))

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        layer_norm_into(self.library, out, x, weight, bias, eps)
        return out

    def add_layer_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None, eps: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        summed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        layer_norm_into(self.library, out, x, weight, bias, eps, residual=residual,
                        summed=summed)
        return out, summed

    def gelu(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        gelu_into(self.library, out, x, kind, gated=False)
        return out

    def gelu_and_mul(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        out = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)
        gelu_into(self.library, out, x, kind, gated=True)
        return out

    def rms_norm_fp8(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> Fp8Rows:
        out = empty_fp8_rows(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        rms_norm_fp8_into(self.library, out, x, weight, eps)
        return out

    def add_rms_norm_fp8(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                         eps: float) -> tuple[Fp8Rows, torch.Tensor]:
        out = empty_fp8_rows(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        summed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        add_rms_norm_fp8_into(self.library, out, summed, x, residual, weight, eps)
        return out, summed

    def silu_and_mul_fp8(self, x: torch.Tensor) -> Fp8Rows:
        out = empty_fp8_rows(x.shape[0], x.shape[-1] // 2, dtype=x.dtype, device=x.device)
        if out.shape[1] > SILU_FP8_MAX_WIDTH:  # wider than one CTA's registers hold
            quantize_fp8_rows_into(self.library, out.q, out.scale, self.silu_and_mul(x))
        else:
            silu_and_mul_fp8_into(self.library, out, x)
        return out

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """csrc/argmax.cu: one CTA a row (torch's reduction took 13 us of a batch-1 step's
        49,152-wide row on an H100)."""
        if logits.dtype != torch.float32 or logits.dim() != 2 or logits.stride(1) != 1:
            return logits.argmax(dim=-1)
        token_ids = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
        argmax_into(self.library, token_ids, logits)
        return token_ids

    def apply_token_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor,
                            rows: torch.Tensor) -> None:
        apply_token_bitmask_into(self.library, logits, bitmask, rows)

    def rope_and_cache(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        rope_and_cache_into(self.library, q_out, k_out, q, k, v, positions, cos_sin, kv_cache,
                            slot_mapping)
        return q_out, k_out

    def attention(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata,
                  scale: float, *, softcap: float | None = None,
                  alibi_slopes: torch.Tensor | None = None,
                  window: int | None = None) -> torch.Tensor:
        q = q if q.is_contiguous() else q.contiguous()
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if window is not None and metadata.max_seq_len <= window:
            window = None  # no context reaches past it: the plain kernels will do
        # softcap, ALiBi and windows: the kernels' _extras builds (ops/cuda_attention_scores.py)
        extras = wants_extras(softcap, alibi_slopes, window)
        if (self.wants_decode_bulk(kv_cache, metadata)
                and decode_bulk_fits(self.library.arch, q=q, kv_cache=kv_cache,
                                     metadata=metadata, extras=extras)):
            decode_bulk_into(self.library, out, q, kv_cache, metadata, scale)
            return out
        paged_attention_into(self.library, out, q, kv_cache, metadata, scale,
                             plan=self.attention_plan(q, kv_cache, metadata, extras=extras),
                             softcap=softcap, alibi_slopes=alibi_slopes, window=window)
        return out

    def wants_decode_bulk(self, kv_cache: torch.Tensor, metadata: AttentionMetadata) -> bool:
        """Whether a decode step that fits the bulk-copy kernel (ops/cuda_decode_bulk.py)
        takes it: only when INFLIGHTD_DECODE_BULK=1 here; TunedCudaOps asks its tuning."""
        return bool(self.decode_bulk_forced)

    def attention_plan(self, q: torch.Tensor, kv_cache: torch.Tensor,
                       metadata: AttentionMetadata, *, extras: bool = False):
        """The launch plan for this call (extras: on the kernels that soft-cap, add ALiBi
        biases or slide a window); None: the kernels' own choice."""
        return None


def _has_mm_float32_out(device: torch.device) -> bool:
    """Whether this torch's cuBLAS matmul writes float32 from 16-bit inputs (mm out_dtype)."""
    if device.type != "cuda":
        return False
    try:
        probe = torch.zeros((1, 8), dtype=torch.bfloat16, device=device)
        return torch.mm(probe, probe.t(), out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False
