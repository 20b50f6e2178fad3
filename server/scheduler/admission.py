"""Whether a waiting request may join the running batch, as far as KV blocks go.

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
