"""Where prefill attention runs on Hopper's warpgroup MMA (csrc/paged_attention_hopper.cu).

The Hopper kernel takes a sequence's query rows 128 at a time (two warpgroups of 64 rows,
K/V tiles of 128 keys) at head_dim 128 over a 16-bit or an e4m3 cache (the _kvfp8 kernels,
fp16 MMAs), with no soft-capping, ALiBi or window; it splits keys into partitions and
merges them as the other kernels do, and takes their arguments. So it is one more row class
of the plan: sequences of at least HOPPER_MIN_ROWS rows per kv head run on it, the rest of
the many-row class stays on the 4-warp kernel.

On by default on sm_90 GPUs; INFLIGHTD_HOPPER_ATTENTION=0 turns it off.
"""

from __future__ import annotations

from dataclasses import replace

from server.engine.gpu.kernel_args import env_switch
from server.engine.gpu.kernels import HOPPER_ATTENTION_MODULE

HOPPER_ATTENTION_ENV = "INFLIGHTD_HOPPER_ATTENTION"
HOPPER_MODULE = HOPPER_ATTENTION_MODULE.name
HOPPER_HEAD_DIM = 128
HOPPER_ROWS = 128  # query rows of a CTA: two warpgroups
HOPPER_WARPS = HOPPER_ROWS // 16  # as the plan counts rows: 16 a warp
HOPPER_MIN_ROWS = HOPPER_ROWS  # a whole tile: shorter sequences stay on the 4-warp kernel
# Q and three stages of K and V (32 KB each), plus alignment to the swizzle's 1,024 bytes:
# kHopperSmemBytes in the kernel
HOPPER_SMEM_BYTES = 7 * 32 * 1024 + 1024 + 64  # + the warp-specialised kernels' mbarriers
# the cache in the model's dtype, or e4m3
_SUFFIXES = ("bf16", "fp16", "bf16_kvfp8", "fp16_kvfp8")


def hopper_attention_enabled(arch: str) -> bool:
    """Whether plans may use the Hopper kernel on a GPU of `arch`: only sm_90, and not when
    INFLIGHTD_HOPPER_ATTENTION says 0."""
    return (env_switch(HOPPER_ATTENTION_ENV, default=True)
            and HOPPER_ATTENTION_MODULE.target(arch) is not None)


def hopper_threads(suffix: str) -> int:
    """Threads of a Hopper kernel's CTA: two consumer warpgroups and a producer over a 16-bit
    cache (csrc/hopper_ws.cuh); over an e4m3 cache the two warpgroups copy and convert too."""
    return 256 if suffix.endswith("_kvfp8") else 384


def hopper_kernel_name(suffix: str) -> str:
    return f"paged_attention_hopper_{suffix}_d{HOPPER_HEAD_DIM}"


def hopper_attention_fits(arch: str, *, suffix: str, head_dim: int, block_size: int,
                          extras: bool) -> bool:
    """Whether the Hopper kernel can take a plan's many-row sequences: head_dim 128 over a
    16-bit or e4m3 cache in blocks of a power of two (the kernel shifts instead of
    dividing), no soft-capping, ALiBi or window, on an sm_90 GPU, and not turned off."""
    return (head_dim == HOPPER_HEAD_DIM and suffix in _SUFFIXES and not extras
            and block_size > 0 and block_size & (block_size - 1) == 0
            and hopper_attention_enabled(arch))


def hopper_row_classes(classes: tuple) -> tuple:
    """cuda_attention's row classes with the many-row (4-warp) class cut at HOPPER_MIN_ROWS:
    from there on, sequences run on the Hopper kernel."""
    cut = []
    for row_class in classes:
        if row_class.warps != 4:
            cut.append(row_class)
            continue
        cut.append(replace(row_class, max_rows=HOPPER_MIN_ROWS - 1))
        cut.append(replace(row_class, warps=HOPPER_WARPS, min_rows=HOPPER_MIN_ROWS,
                           hopper=True))
    return tuple(cut)
