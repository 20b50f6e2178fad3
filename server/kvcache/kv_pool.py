"""The KV tensors behind the block manager's block ids.

One tensor holds every layer:

    kv_cache [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
              layer      K/V  block     offset in block

so `kv_cache[layer]` is the per-layer view the Ops take, and slot
`block_id * block_size + offset` is a row of `kv_cache[layer, 0].view(-1, Hkv, D)`.
This is the one module of server/kvcache that imports torch.

The pool holds the model's dtype, or with --kv-cache-dtype fp8 e4m3 (torch.float8_e4m3fn):
each K and V value is rounded to the nearest e4m3, saturated to +-448, with no scale (as
vLLM and TensorRT-LLM do without calibrated scales); attention widens it back exactly. Half
the bytes of a 16-bit cache: twice the tokens, and half the reads of a decode step.
"""

from __future__ import annotations

import os

import torch

from server.config import KV_CACHE_DTYPES

# Used when the cache config names no size: most of what is free on a GPU after the weights,
# a fixed, predictable budget on CPU (where the pool competes with everything else in RAM).
DEFAULT_GPU_MEMORY_FRACTION = 0.9
DEFAULT_CPU_KV_TOKENS = 8192


FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_KV_MAX = 448.0  # e4m3's largest finite value; writes saturate to it


class KVCacheSizeError(ValueError):
    """The requested KV cache does not fit, or is smaller than one block."""


class KVCacheDtypeError(ValueError):
    """--kv-cache-dtype names a cache this device or model cannot run."""


def kv_cache_dtype_for(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The pool's torch dtype for a --kv-cache-dtype value: every value of
    server.config.KV_CACHE_DTYPES but "auto" names e4m3."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise KVCacheDtypeError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                                f"got {kv_cache_dtype!r}")
    return model_dtype if kv_cache_dtype == "auto" else FP8_KV_DTYPE


def check_kv_cache_kernels(cache_dtype: torch.dtype, device: torch.device) -> None:
    """Our kernels read and write an e4m3 cache with the FP8 conversions of compute
    capability 8.9+ (Ada, Hopper); the torch reference path runs it anywhere."""
    if cache_dtype != FP8_KV_DTYPE or device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise KVCacheDtypeError(f"--kv-cache-dtype fp8 needs compute capability 8.9 or newer "
                                f"(FP8 conversions); this GPU is {major}.{minor}")


def bytes_per_block(*, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                    dtype: torch.dtype) -> int:
    """K and V of every layer for block_size token positions."""
    element_size = torch.empty((), dtype=dtype).element_size()
    return num_layers * 2 * block_size * num_kv_heads * head_dim * element_size


def num_blocks_for(*, block_size: int, bytes_per_block: int, num_blocks: int | None = None,
                   kv_cache_tokens: int | None = None, memory_fraction: float | None = None,
                   free_bytes: int | None = None) -> int:
    """How many blocks the pool gets; the first size given wins: num_blocks, then
    kv_cache_tokens (rounded down to whole blocks), then memory_fraction of free_bytes."""
    if num_blocks is not None:
        if num_blocks < 1:
            raise KVCacheSizeError(f"num_blocks must be >= 1, got {num_blocks}")
        return num_blocks
    if kv_cache_tokens is not None:
        if kv_cache_tokens < block_size:
            raise KVCacheSizeError(f"--kv-cache-tokens ({kv_cache_tokens}) must be at least "
                                   f"one block ({block_size} tokens)")
        return kv_cache_tokens // block_size
    if memory_fraction is None or free_bytes is None:
        raise KVCacheSizeError("give num_blocks, kv_cache_tokens, or memory_fraction with the "
                               "free memory to size the KV cache from")
    blocks = int(free_bytes * memory_fraction) // bytes_per_block
    if blocks < 1:
        raise KVCacheSizeError(
            f"--memory-fraction {memory_fraction} of {free_bytes / 2**20:.0f} MiB free memory "
            f"holds no KV block ({bytes_per_block / 2**20:.2f} MiB each); raise the fraction, "
            "give --kv-cache-tokens, or use a smaller model")
    return blocks


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory where the pool will live: the GPU's, or the host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _available_host_bytes()


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class KVPool:
    """Allocates and owns the KV cache tensor (zero-filled, so unwritten slots are finite)."""

    def __init__(self, *, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
        if num_blocks < 1:
            raise KVCacheSizeError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.bytes_per_block = bytes_per_block(num_layers=num_layers, num_kv_heads=num_kv_heads,
                                               head_dim=head_dim, block_size=block_size,
                                               dtype=dtype)
        self.kv_cache = torch.zeros(
            (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim),
            dtype=dtype, device=device)

    @property
    def bytes_per_token(self) -> int:
        return self.bytes_per_block // self.block_size

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    def layer(self, index: int) -> torch.Tensor:
        """[2, num_blocks, block_size, Hkv, D] for one layer."""
        return self.kv_cache[index]

    @classmethod
    def sized(cls, *, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
              dtype: torch.dtype, device: torch.device | str, num_blocks: int | None = None,
              kv_cache_tokens: int | None = None,
              memory_fraction: float | None = None) -> "KVPool":
        """Sizes the pool from whichever of num_blocks / kv_cache_tokens / memory_fraction
        is given, measuring free memory now (so call it after the weights are loaded).
        With none given: DEFAULT_GPU_MEMORY_FRACTION on a GPU, DEFAULT_CPU_KV_TOKENS on CPU."""
        device = torch.device(device)
        if num_blocks is None and kv_cache_tokens is None and memory_fraction is None:
            if device.type == "cuda":
                memory_fraction = DEFAULT_GPU_MEMORY_FRACTION
            else:
                kv_cache_tokens = max(DEFAULT_CPU_KV_TOKENS, block_size)
        per_block = bytes_per_block(num_layers=num_layers, num_kv_heads=num_kv_heads,
                                    head_dim=head_dim, block_size=block_size, dtype=dtype)
        free = free_memory_bytes(device)
        blocks = num_blocks_for(block_size=block_size, bytes_per_block=per_block,
                                num_blocks=num_blocks, kv_cache_tokens=kv_cache_tokens,
                                memory_fraction=memory_fraction, free_bytes=free)
        if blocks * per_block > free:
            raise KVCacheSizeError(
                f"a KV cache of {blocks} blocks needs {blocks * per_block / 2**20:.0f} MiB but "
                f"only {free / 2**20:.0f} MiB is free on {device}; lower --kv-cache-tokens")
        return cls(num_layers=num_layers, num_blocks=blocks, block_size=block_size,
                   num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=device)
