"""A step's token budget: running decodes first, then prefill chunks under a cap of their
own.

    step budget (max_num_batched_tokens):
    | decodes: 1 token each, every running one | prefill chunks (running, then waiting) |
                                               |<--- at most max_prefill_tokens ------>|

Why: a decode waits for its next token exactly as long as the step it is in takes, and a
step's time grows with its prefill tokens. Serving decodes first means a prefill never takes
a running decode's slot (it used to: under the priority policy a new high-priority prompt
sorted ahead of the running decodes and took the whole budget for as many steps as its
prompt needed); the prefill cap bounds how long any step, so any inter-token gap, can be.
A smaller cap spreads a prompt over more steps: lower inter-token latency, higher time to
first token (docs/scheduling.md).

No running decode is ever left out of a step, whatever max_num_seqs is: a request starts
decoding only after a step in which its last prompt chunk took at least one token of what
the decodes left, so the decodes of the next step never outnumber the budget.
"""

from __future__ import annotations


class StepBudget:
    """Tokens left in one step, overall and for prefill chunks, with what each scheduled
    request was charged (refunded if a later preemption takes its chunk back)."""

    def __init__(self, *, max_tokens: int, max_prefill_tokens: int) -> None:
        self.tokens = max_tokens
        self._prefill_cap = max_prefill_tokens
        self.prefill_tokens = 0  # spent on prefill chunks so far
        self._charges: dict[str, tuple[int, bool]] = {}  # req_id -> (tokens, prefill)

    @property
    def prefill_left(self) -> int:
        return max(0, min(self.tokens, self._prefill_cap - self.prefill_tokens))

    def spend(self, req_id: str, num_tokens: int, *, prefill: bool) -> None:
        self.tokens -= num_tokens
        self.prefill_tokens += num_tokens if prefill else 0
        self._charges[req_id] = (num_tokens, prefill)

    def refund(self, req_id: str) -> None:
        num_tokens, prefill = self._charges.pop(req_id)
        self.tokens += num_tokens
        self.prefill_tokens -= num_tokens if prefill else 0
