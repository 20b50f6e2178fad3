"""Decode attention on the bulk-copy kernel (csrc/paged_decode_bulk.cu): which steps it takes,
how many parts it cuts each sequence's keys into, and its checked launch.

It takes decode-only steps (one query token a sequence) over a cache of 8 kv heads of
head_dim 128, 16-bit or e4m3, GQA groups of up to 8 query heads, blocks of a multiple of 16
tokens, without soft-capping, ALiBi or windows, on sm_90. A CTA is one sequence (or one part
of its keys) and all 8 of its kv heads; parts write float32 partials that the last part of a
sequence to finish merges. Like the other attention kernels it reads each sequence's length
on the device, and the part count comes from host values only (max_seq_len), so a captured
decode graph stays right at replay. Which of the steps it fits it takes: those an engine's
build timed it faster on (gpu/tune_decode_bulk.py, TunedCudaOps), or as
INFLIGHTD_DECODE_BULK forces.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.gpu.kernel_args import (KernelArgumentError, dtype_suffix, env_switch,
                                           kv_cache_suffix)
from server.engine.gpu.kernels import DECODE_BULK_MODULE, KernelLibrary
from server.engine.ops.cuda_attention import check_attention_args

DECODE_BULK_ENV = "INFLIGHTD_DECODE_BULK"  # 1: decode steps that fit take this kernel
KV_HEADS = 8
HEAD_DIM = 128
MAX_GROUP = 8  # query heads a kv head: the MMA's N
TILE_KEYS = 16
THREADS = 32 * (KV_HEADS + 1)
SMEM_LIMIT = 227 * 1024  # csrc/paged_decode_bulk.cu's kBulkSmemBytes
ROW_PAD = 16
MAX_PARTITIONS = 64
MIN_PART_TILES = 4  # a part's fewest 16-key tiles: shorter parts cost their merge more
GOOD_WAVE_FILL = 0.85  # as ops/cuda_attention.py: the last wave of CTAs this full or more
COUNTERS = "decode_bulk_arrival_counters"


def decode_bulk_forced() -> bool | None:
    """INFLIGHTD_DECODE_BULK: 1 gives every decode step that fits to the bulk kernel, 0 none;
    unset (None), an engine's build-time tuning decides (gpu/tuning.py), and without one the
    steps stay on the planned kernels."""
    if os.environ.get(DECODE_BULK_ENV) is None:
        return None
    return env_switch(DECODE_BULK_ENV, default=False)


def stage_bytes(e4m3_cache: bool) -> int:
    row = KV_HEADS * HEAD_DIM * (1 if e4m3_cache else 2) + ROW_PAD
    return 2 * TILE_KEYS * row


def num_stages(e4m3_cache: bool) -> int:
    return (SMEM_LIMIT - 1024) // stage_bytes(e4m3_cache)


def smem_bytes(e4m3_cache: bool) -> int:
    """The dynamic shared memory of a CTA: its stages, then a full and an empty mbarrier
    each."""
    stages = num_stages(e4m3_cache)
    return stages * stage_bytes(e4m3_cache) + 16 * stages


def kernel_name(q: torch.Tensor, kv_cache: torch.Tensor) -> str:
    return f"paged_decode_bulk_{dtype_suffix('q', q)}{kv_cache_suffix(kv_cache, q.dtype)}_d128"


def decode_bulk_fits(arch: str, *, q: torch.Tensor, kv_cache: torch.Tensor,
                     metadata: AttentionMetadata, extras: bool) -> bool:
    """Whether the bulk kernel can run this step (kv_cache one layer's [2, blocks,
    block_size, kv heads, head_dim])."""
    num_heads, head_dim = q.shape[1:]
    return (DECODE_BULK_MODULE.target(arch) is not None and not extras
            and head_dim == HEAD_DIM and kv_cache.shape[3] == KV_HEADS
            and num_heads % KV_HEADS == 0 and num_heads // KV_HEADS <= MAX_GROUP
            and kv_cache.shape[2] % TILE_KEYS == 0 and metadata.num_seqs > 0
            and metadata.num_tokens == metadata.num_seqs and metadata.max_query_len == 1)


def bulk_partitions(*, num_seqs: int, max_seq_len: int, num_sms: int) -> int:
    """Parts a sequence's keys are cut into: 1 where the sequences fill the SMs' waves well
    (one CTA an SM), else the fewest parts whose last wave is GOOD_WAVE_FILL full, keeping
    parts of at least MIN_PART_TILES tiles of the longest context."""
    most = max(1, min(MAX_PARTITIONS, -(-max_seq_len // TILE_KEYS) // MIN_PART_TILES))
    for parts in range(1, most + 1):
        ctas = num_seqs * parts
        waves = -(-ctas // num_sms)
        if ctas / (waves * num_sms) >= GOOD_WAVE_FILL:
            return parts
    return most


def decode_bulk_into(lib: KernelLibrary, out: torch.Tensor, q: torch.Tensor,
                     kv_cache: torch.Tensor, metadata: AttentionMetadata, scale: float, *,
                     num_partitions: int | None = None) -> int:
    """Attention of the decode step's q [num_seqs, H, 128] over the cache into out; returns
    the part count used (num_partitions None: bulk_partitions'). Checks the step against
    decode_bulk_fits, then the arguments as paged_attention_into does (the kernel takes V
    num_slots * 1024 elements after K, so the cache must be contiguous)."""
    if not decode_bulk_fits(lib.arch, q=q, kv_cache=kv_cache, metadata=metadata,
                            extras=False):
        raise KernelArgumentError("the bulk decode kernel takes decode steps over 8 kv heads "
                                  f"of head_dim {HEAD_DIM}, groups of up to {MAX_GROUP} and "
                                  f"blocks of a multiple of {TILE_KEYS} tokens on sm_90")
    check_attention_args(lib, out, q, kv_cache, metadata)
    num_seqs, num_heads = metadata.num_seqs, q.shape[1]
    parts = num_partitions or bulk_partitions(num_seqs=num_seqs,
                                              max_seq_len=metadata.max_seq_len,
                                              num_sms=lib.num_sms)
    if not 1 <= parts <= MAX_PARTITIONS:
        raise KernelArgumentError(f"num_partitions must be 1 to {MAX_PARTITIONS}, got {parts}")
    if parts > 1:
        # fresh partials each call (a captured graph's pool owns them); the library's
        # persistent zeroed counters, which every launch leaves at 0
        part_acc = torch.empty(num_seqs * parts * num_heads * HEAD_DIM, dtype=torch.float32,
                               device=q.device)
        part_ml = torch.empty(num_seqs * parts * num_heads * 2, dtype=torch.float32,
                              device=q.device)
        counters = lib.zeroed_int32(COUNTERS, num_seqs)
        partials = (part_acc.data_ptr(), part_ml.data_ptr(), counters.data_ptr())
    else:
        partials = (0, 0, 0)
    e4m3 = kv_cache.dtype == torch.float8_e4m3fn
    lib.launch(DECODE_BULK_MODULE.name, kernel_name(q, kv_cache), grid=(num_seqs, parts),
               block=(THREADS,), shared_bytes=smem_bytes(e4m3),
               args=(out.data_ptr(), *partials, q.data_ptr(), kv_cache.data_ptr(),
                     metadata.query_start_loc.data_ptr(), metadata.seq_lens.data_ptr(),
                     metadata.block_tables.data_ptr(), np.int32(num_heads),
                     np.int32(kv_cache.shape[2]), np.int32(metadata.block_tables.shape[1]),
                     np.int64(kv_cache.shape[1] * kv_cache.shape[2]), np.float32(scale),
                     np.int32(parts)))
    return parts
