"""Whether a request could ever run (check_admissible), and whether a waiting one may join
the running batch now, as far as KV blocks go:

    optimistic  admit while the request's next chunk fits; when blocks run out later, the
                scheduler preempts the running tail (recomputed on resume). The most
                requests at once, at the cost of recomputation (vLLM's way, TensorRT-LLM's
                MAX_UTILIZATION).
    guaranteed  admit only while every running request, this one included, could grow to
                its prompt + max_tokens at the same time: no request is ever preempted, so
                nothing is recomputed (TensorRT-LLM's GUARANTEED_NO_EVICT, its default).
                Best when requests run to max_tokens, as benchmark workloads with
                ignore_eos do; wasteful when max_tokens is far above what they generate.

The guaranteed count charges each request its whole table, shared prefix blocks included,
so it can only over-estimate what the running requests will hold.
"""

from __future__ import annotations

from collections.abc import Container

from server.config import SchedulerConfig
from server.kvcache.block_manager import BlockManager
from server.scheduler.errors import RequestRejectedError
from server.scheduler.request import Request


def max_blocks(request: Request, block_size: int) -> int:
    """Blocks the request holds at its longest (Request.max_kv_slots)."""
    return -(-request.max_kv_slots // block_size)


class OptimisticAdmission:
    def fits(self, request: Request) -> bool:
        return True

    def admit(self, request: Request) -> None:
        pass

    def release(self, request: Request) -> None:
        pass


class GuaranteedAdmission:
    """Counts the blocks the running requests may grow to; admits within num_blocks."""

    def __init__(self, *, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_committed_blocks = 0
        self._committed: dict[str, int] = {}

    def fits(self, request: Request) -> bool:
        return (self.num_committed_blocks + max_blocks(request, self.block_size)
                <= self.num_blocks)

    def admit(self, request: Request) -> None:
        blocks = max_blocks(request, self.block_size)
        self._committed[request.req_id] = blocks
        self.num_committed_blocks += blocks

    def release(self, request: Request) -> None:
        self.num_committed_blocks -= self._committed.pop(request.req_id, 0)


def make_admission(kind: str, *, num_blocks: int, block_size: int
                   ) -> OptimisticAdmission | GuaranteedAdmission:
    if kind == "guaranteed":
        return GuaranteedAdmission(num_blocks=num_blocks, block_size=block_size)
    return OptimisticAdmission()


def check_admissible(request: Request, *, config: SchedulerConfig, block_manager: BlockManager,
                     in_use: Container[str]) -> None:
    """Raise RequestRejectedError if the request could never run (or its id is taken)."""
    if request.req_id in in_use:
        raise RequestRejectedError(
            "duplicate_request_id", f"request id {request.req_id!r} is already in use")
    if request.num_prompt_tokens == 0:
        raise RequestRejectedError("empty_prompt", "the prompt has no tokens")
    max_tokens = request.sampling_params.max_tokens
    total = request.num_prompt_tokens + max_tokens
    if total > config.max_model_len:
        raise RequestRejectedError(
            "context_length_exceeded",
            f"prompt ({request.num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = "
            f"{total} is beyond the maximum context length of "
            f"{config.max_model_len} tokens; shorten the prompt or lower max_tokens")
    if _most_blocks_held(request.max_kv_slots, config, block_manager) > block_manager.num_blocks:
        capacity = block_manager.num_blocks * block_manager.block_size
        raise RequestRejectedError(
            "kv_cache_too_small",
            f"prompt + max_tokens needs {request.max_kv_slots} KV slots but the whole "
            f"KV cache holds {capacity}; lower max_tokens or give the cache more memory")


def _most_blocks_held(num_slots: int, config: SchedulerConfig,
                      block_manager: BlockManager) -> int:
    """Blocks a request of num_slots KV slots holds at most at once: all of them, or with a
    sliding window in every layer the window and a chunk (plus one block of
    misalignment)."""
    blocks = block_manager.num_blocks_for(num_slots)
    window = config.kv_window
    if window is None:
        return blocks
    chunk = config.max_num_batched_tokens
    return min(blocks, block_manager.num_blocks_for(window - 1 + chunk) + 1)
