"""Stored responses (store: true), kept in the api process's memory for GET, DELETE and
previous_response_id: at most `max_responses` of them, none older than `max_age_s`; the
oldest goes first when the store is full. They are lost when the daemon restarts."""

from __future__ import annotations

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


class ResponseStore:
    def __init__(self, *, max_responses: int, max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_responses = max_responses
        self._max_age_s = max_age_s
        self._clock = clock
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._responses)

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        if self._max_responses == 0:
            return
        self._expire()
        self._responses[response["id"]] = StoredResponse(response, tuple(messages),
                                                         self._clock())
        while len(self._responses) > self._max_responses:
            self._responses.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        return self._responses.get(response_id)

    def delete(self, response_id: str) -> bool:
        self._expire()
        return self._responses.pop(response_id, None) is not None

    def _expire(self) -> None:
        """Drop responses past their age; the oldest are first, so stop at a young one."""
        oldest_kept = self._clock() - self._max_age_s
        while self._responses:
            response_id, stored = next(iter(self._responses.items()))
            if stored.stored_at >= oldest_kept:
                return
            del self._responses[response_id]
