"""Weights a coming GEMV will read, started into L2 while the small kernels before it run.

A decode step of a few tokens streams the weights once, GEMV after GEMV, and between them
run the norms, the cache write and attention, which leave HBM idle (on GPT-2 XL's batch-1
step about 0.7 of its 2.2 ms, docs/benchmarks.md). `prefetch_into_l2` launches
csrc/prefetch.cu just before those kernels, asking L2 for the head of the weight the next
GEMV reads first, so the memory keeps streaming while they run. Only the head: the GEMV
reads its weight from the first row on, and a prefetch larger than L2 would evict its own
first lines before the GEMV got to them.

Off unless INFLIGHTD_PREFETCH_WEIGHTS=1 (or CudaOps(prefetch_weights=True)), and only on
sm_90 and later with programmatic launch, where the bulk prefetch and the early start exist.
"""

from __future__ import annotations

import numpy as np
import torch

from server.engine.gpu.kernel_args import KernelArgumentError, env_switch
from server.engine.gpu.kernels import KernelLibrary, arch_number
from server.engine.models.int_weights import IntWeight
from server.engine.models.quantization import Fp8Weight

PREFETCH_ENV = "INFLIGHTD_PREFETCH_WEIGHTS"
PREFETCH_MIN_ARCH = 90  # cp.async.bulk.prefetch.L2
PREFETCH_THREADS = 32  # one warp a CTA, up to one CTA an SM: each SM issues its own share
PREFETCH_CHUNK_BYTES = 64 * 1024  # one bulk prefetch instruction's bytes
PREFETCH_MAX_BYTES = 16 * 2**20  # the head of a weight asked for: a third of an H100's L2
PREFETCH_MAX_TOKENS = 16  # steps of more tokens than this are not bound by weight bytes
ALIGNMENT = 16  # the bulk prefetch's address and size granule


def prefetch_enabled(arch: str, programmatic_launch: bool, requested: bool | None = None
                     ) -> bool:
    """Whether CudaOps prefetches weights: as requested, else as INFLIGHTD_PREFETCH_WEIGHTS
    says ("1" on, default off); never before sm_90 or without programmatic launch."""
    if requested is None:
        requested = env_switch(PREFETCH_ENV, default=False)
    return requested and programmatic_launch and arch_number(arch) >= PREFETCH_MIN_ARCH


def weight_bytes_tensor(weight: torch.Tensor | Fp8Weight | IntWeight) -> torch.Tensor:
    """The tensor holding a linear weight's streamed bytes (not its scales)."""
    if isinstance(weight, Fp8Weight):
        return weight.data
    if isinstance(weight, IntWeight):
        return weight.qweight
    return weight


def prefetch_range(tensor: torch.Tensor, *, max_bytes: int = PREFETCH_MAX_BYTES
                   ) -> tuple[int, int]:
    """(address, bytes) to prefetch: the tensor's first max_bytes, its start rounded up and
    its length down to 16 bytes, so nothing outside the tensor is asked for."""
    if not tensor.is_contiguous():
        raise KernelArgumentError("prefetch: the weight must be contiguous")
    start = tensor.data_ptr()
    end = start + min(tensor.numel() * tensor.element_size(), max_bytes)
    aligned_start = -(-start // ALIGNMENT) * ALIGNMENT
    aligned_end = end // ALIGNMENT * ALIGNMENT
    return aligned_start, max(0, aligned_end - aligned_start)


def prefetch_into_l2(lib: KernelLibrary, weight: torch.Tensor | Fp8Weight | IntWeight, *,
                     max_bytes: int = PREFETCH_MAX_BYTES,
                     chunk_bytes: int = PREFETCH_CHUNK_BYTES, max_ctas: int | None = None
                     ) -> None:
    """Launches csrc/prefetch.cu over the head of `weight`: its chunks spread over up to one
    one-warp CTA per SM (or max_ctas, bench/weight_prefetch.py's probe)."""
    if chunk_bytes <= 0 or chunk_bytes % ALIGNMENT:
        raise KernelArgumentError(f"prefetch chunk must be a positive multiple of {ALIGNMENT} "
                                  f"bytes, got {chunk_bytes}")
    tensor = weight_bytes_tensor(weight)
    if tensor.device != lib.device:
        raise KernelArgumentError(f"prefetch: weight on {tensor.device}, kernels on "
                                  f"{lib.device}")
    address, num_bytes = prefetch_range(tensor, max_bytes=max_bytes)
    if num_bytes == 0:
        return
    num_chunks = -(-num_bytes // chunk_bytes)
    chunks_per_cta = -(-num_chunks // min(num_chunks, max_ctas or lib.num_sms))
    ctas = -(-num_chunks // chunks_per_cta)
    lib.launch("prefetch", "prefetch_l2", grid=(ctas,), block=(PREFETCH_THREADS,),
               args=(address, np.int64(num_bytes), np.int32(chunk_bytes),
                     np.int32(chunks_per_cta)))
