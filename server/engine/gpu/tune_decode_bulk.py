"""Build-time timing of the bulk-copy decode kernel (ops/cuda_decode_bulk.py) against the
kernels the plan picks (gpu/tuning.py's "decode_bulk"): for each cache dtype the engine may
serve (the model's, and e4m3) and each context bucket, decode steps of 1, 16, 64 and 256
sequences holding the bucket's context (capped by MAX_TUNING_KV_TOKENS), planned for it,
each kernel's call replayed from a CUDA graph as decode steps run; the bulk kernel takes the
sequence counts where it was faster. Nothing is timed for a model the kernel does not fit.
"""

from __future__ import annotations

import torch

from server.engine.gpu.graph_capture import median_replay_ms
from server.engine.gpu.kernels import KernelLibrary
from server.engine.gpu.tuning import (BulkChoice, KernelTuning, TunedCudaOps, context_buckets,
                                      random_decode_batch)
from server.engine.ops.cuda_decode_bulk import decode_bulk_fits
from server.kvcache.kv_pool import FP8_KV_DTYPE

BULK_TUNING_SEQS = (1, 16, 64, 256)


def tune_decode_bulk(library: KernelLibrary, tuning: KernelTuning, *, num_heads: int,
                     num_kv_heads: int, head_dim: int, dtype: torch.dtype, block_size: int,
                     max_model_len: int) -> tuple[BulkChoice, ...]:
    """The bulk kernel's choices, timed against TunedCudaOps under `tuning` (the partition
    lengths just tuned); () where the kernel does not fit the model's shape."""
    choices = []
    for kv_dtype in (dtype, FP8_KV_DTYPE):
        for max_context in context_buckets(max_model_len):
            timings = []
            for num_seqs in BULK_TUNING_SEQS:
                batch = random_decode_batch(library, num_seqs=num_seqs, context=max_context,
                                            plan_context=max_context, num_heads=num_heads,
                                            num_kv_heads=num_kv_heads, head_dim=head_dim,
                                            dtype=dtype, block_size=block_size,
                                            kv_dtype=kv_dtype)
                q, kv_cache, metadata = batch
                if not decode_bulk_fits(library.arch, q=q, kv_cache=kv_cache,
                                        metadata=metadata, extras=False):
                    return ()
                plan_us, bulk_us = (time_decode(library, tuning, *batch, bulk=on,
                                                scale=head_dim ** -0.5) for on in (False, True))
                timings.append((num_seqs, plan_us, bulk_us))
                del batch, q, kv_cache, metadata
            choices.append(BulkChoice(
                kv_dtype=str(kv_dtype).removeprefix("torch."), max_context=max_context,
                bulk_seqs=tuple(n for n, plan_us, bulk_us in timings if bulk_us < plan_us),
                timings_us=tuple(timings)))
    return tuple(choices)


def time_decode(library: KernelLibrary, tuning: KernelTuning, q: torch.Tensor,
                kv_cache: torch.Tensor, metadata, *, bulk: bool, scale: float,
                calls: int = 10, repeats: int = 5) -> float:
    """Microseconds of one decode attention call with the bulk kernel forced on or off."""
    ops = TunedCudaOps(library, tuning)
    ops.decode_bulk_forced = bulk
    return 1e3 * median_replay_ms(lambda: ops.attention(q, kv_cache, metadata, scale),
                                  calls=calls, replays=repeats, warmup=1,
                                  device=library.device)
