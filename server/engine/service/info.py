"""What the engine tells the api process about itself: plain dataclasses, importable
without torch (the api process has none), sent as they are over the engine's socket
(msgspec encodes dataclasses; server/engine/service/messages.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineInfo:
    """What the api process needs to know about the engine it talks to."""

    model_name: str
    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    num_kv_blocks: int
    block_size: int
    kv_cache_tokens: int
    tokenizer_dir: str | None
    device: str
    dtype: str
    quantization: str | None = None  # "fp8": FP8 linear layers
    kv_cache_dtype: str = ""  # the pool's torch dtype name: the model's, or "float8_e4m3fn"


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_blocks: int
    num_evictable_blocks: int  # free blocks that still hold a reusable cached prefix
    num_used_blocks: int  # held by live requests
    kv_cache_usage: float  # 0..1
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    energy_joules: float | None = None  # GPU energy since start (NVML); None: no counter
