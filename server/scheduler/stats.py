"""A read-only snapshot of the scheduler's figures, for metrics and the engine's idle checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    num_preemptions_total: int
    kv_cache_usage: float  # 0..1, evictable cached blocks count as free
    num_free_blocks: int
    num_evictable_blocks: int  # free blocks that still hold a reusable cached prefix
    num_total_blocks: int
    prefix_cache_queries: int  # tokens looked up in the prefix cache
    prefix_cache_hits: int  # tokens found there

    @property
    def prefix_cache_hit_rate(self) -> float:
        if self.prefix_cache_queries == 0:
            return 0.0
        return self.prefix_cache_hits / self.prefix_cache_queries
