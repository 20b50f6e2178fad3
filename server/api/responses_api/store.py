"""Stored responses (store: true), kept in the api process's memory for GET, DELETE and
previous_response_id, under three limits: at most `max_responses` of them, at most
`max_bytes` of them (as JSON), none older than `max_age_s`. The oldest go first when a new
one does not fit. They are lost when the daemon restarts.

Each keeps its whole conversation, so a long chain of previous_response_id turns stores the
early turns again with every later one: the byte limit is what bounds that."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the Response object as it was returned
    # the conversation so far as chat messages (without instructions, which a following
    # turn does not inherit): earlier turns, this turn's input, this turn's output
    messages: tuple[dict[str, Any], ...]
    stored_at: float
    num_bytes: int


class ResponseStore:
    def __init__(self, *, max_responses: int, max_bytes: int, max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_responses = max_responses
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._clock = clock
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()
        self._num_bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._responses)

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
        """Keep a response; False when it alone is over the limits (it is not kept)."""
        num_bytes = len(json.dumps(response)) + len(json.dumps(messages))
        if self._max_responses == 0 or num_bytes > self._max_bytes:
            return False
        self._expire()
        self._drop(response["id"])
        self._responses[response["id"]] = StoredResponse(response, tuple(messages),
                                                         self._clock(), num_bytes)
        self._num_bytes += num_bytes
        while (len(self._responses) > self._max_responses
               or self._num_bytes > self._max_bytes):
            self._drop(next(iter(self._responses)))
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        return self._responses.get(response_id)

    def delete(self, response_id: str) -> bool:
        self._expire()
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        stored = self._responses.pop(response_id, None)
        if stored is None:
            return False
        self._num_bytes -= stored.num_bytes
        return True

    def _expire(self) -> None:
        """Drop responses past their age; the oldest are first, so stop at a young one."""
        oldest_kept = self._clock() - self._max_age_s
        while self._responses:
            response_id, stored = next(iter(self._responses.items()))
            if stored.stored_at >= oldest_kept:
                return
            self._drop(response_id)
