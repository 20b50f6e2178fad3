"""OutputStream: where one api request's engine outputs wait for the request's task, merged
while that task is busy (a client reading slower than the engine writes).

    engine step k   ─▶ _put([out_a_k, out_b_k])  ─┐ pending: {a: out_a_k, b: out_b_k}
    engine step k+1 ─▶ _put([out_a_k+1])          ─┤ pending: {a: out_a_k ⊕ out_a_k+1, b: ...}
                                                    └▶ next_batch() takes them all at once

At most one output waits per engine request: a new one merges into the one waiting
(tokens and logprobs appended, the prompt logprobs of the first kept, the later finish
reason and counts kept), so a client that
falls behind gets one bigger chunk per engine request when it reads again, instead of an
unbounded queue of small ones, and the api process does one chunk's work for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from server.scheduler.output import RequestOutput


def merge_outputs(earlier: RequestOutput, later: RequestOutput) -> RequestOutput:
    """One output standing for two successive outputs of the same engine request."""
    if earlier.logprobs is None and later.logprobs is None:
        logprobs = None
    else:
        logprobs = (earlier.logprobs or ()) + (later.logprobs or ())
    return RequestOutput(req_id=later.req_id,
                         new_token_ids=earlier.new_token_ids + later.new_token_ids,
                         finish_reason=later.finish_reason or earlier.finish_reason,
                         num_prompt_tokens=later.num_prompt_tokens,
                         num_cached_tokens=later.num_cached_tokens, logprobs=logprobs,
                         # they come once, with a request's first output
                         prompt_logprobs=earlier.prompt_logprobs or later.prompt_logprobs)


class OutputStream:
    """The outputs of one api request's engine requests, in batches (EngineClient puts
    them, the request's task takes them)."""

    def __init__(self) -> None:
        self._pending: dict[str, RequestOutput] = {}  # req_id -> its waiting output
        self._error: BaseException | None = None  # raised once the pending are taken
        self._waiter: asyncio.Future[None] | None = None
        self.num_merged = 0  # outputs folded into a waiting one: how far the client lagged
        self.unfinished_req_ids: set[str] = set()
        # req_id -> when the step that first took it from the waiting queue started
        # (time.monotonic()); for queue-time metrics
        self.admitted_at: dict[str, float] = {}

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    async def next_batch(self) -> list[RequestOutput]:
        """Every output waiting (one per engine request); raises EngineRequestRejected or
        EngineDeadError once none is left to hand out before the failure."""
        while not self._pending:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch = list(self._pending.values())
        self._pending = {}
        return batch

    def _put(self, outputs: Iterable[RequestOutput]) -> None:
        pending = self._pending
        for output in outputs:
            earlier = pending.get(output.req_id)
            if earlier is None:
                pending[output.req_id] = output
            else:
                pending[output.req_id] = merge_outputs(earlier, output)
                self.num_merged += 1
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
