"""Who waits first and who is preempted first.

fcfs:      waiting requests in arrival order; running ones in admission order, so the
           preemption victim (the tail) is the most recently admitted.
priority:  lower `priority` first, ties by arrival time, then by arrival order; running
           requests are kept in the same order, so the victim is the lowest priority one
           (most recently arrived among equals).
A preempted request goes back to the head of the waiting queue (fcfs), or ahead of every
waiting request of its own priority and arrival time (priority).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from server.scheduler.request import Request


class WaitingQueue(Protocol):
    def push(self, request: Request) -> None: ...
    def push_front(self, request: Request) -> None: ...
    def peek(self) -> Request: ...
    def pop(self) -> Request: ...
    def remove(self, request: Request) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Request]: ...


class FcfsQueue:
    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def push(self, request: Request) -> None:
        self._queue.append(request)

    def push_front(self, request: Request) -> None:
        self._queue.appendleft(request)

    def peek(self) -> Request:
        return self._queue[0]

    def pop(self) -> Request:
        return self._queue.popleft()

    def remove(self, request: Request) -> None:
        # by identity: Request's dataclass __eq__ would compare every field
        for index, queued in enumerate(self._queue):
            if queued is request:
                del self._queue[index]
                return
        raise ValueError(f"request {request.req_id!r} is not waiting")

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queue)


class PriorityQueue:
    """A heap on (priority, arrival_time, sequence). push_front uses a negative sequence
    so a preempted request beats every equal-keyed request pushed the ordinary way."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._sequence = itertools.count(1)

    def push(self, request: Request) -> None:
        self._push(request, next(self._sequence))

    def push_front(self, request: Request) -> None:
        self._push(request, -next(self._sequence))

    def _push(self, request: Request, sequence: int) -> None:
        heapq.heappush(self._heap, (request.priority, request.arrival_time, sequence, request))

    def peek(self) -> Request:
        return self._heap[0][3]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[3]

    def remove(self, request: Request) -> None:
        kept = [entry for entry in self._heap if entry[3] is not request]
        if len(kept) == len(self._heap):
            raise ValueError(f"request {request.req_id!r} is not waiting")
        heapq.heapify(kept)
        self._heap = kept

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (entry[3] for entry in sorted(self._heap, key=lambda e: e[:3]))


class SchedulingPolicy(Protocol):
    name: str

    def new_waiting_queue(self) -> WaitingQueue: ...

    def order_running(self, running: list[Request]) -> None:
        """Sort in place: served from the head, preempted from the tail."""


class FcfsPolicy:
    name = "fcfs"

    def new_waiting_queue(self) -> WaitingQueue:
        return FcfsQueue()

    def order_running(self, running: list[Request]) -> None:
        pass  # admission order already: the tail is the most recently admitted


class PriorityPolicy:
    name = "priority"

    def new_waiting_queue(self) -> WaitingQueue:
        return PriorityQueue()

    def order_running(self, running: list[Request]) -> None:
        # stable: among equal keys the admission order stays, the latest admitted last
        running.sort(key=lambda r: (r.priority, r.arrival_time))


def make_policy(name: str) -> SchedulingPolicy:
    if name == "fcfs":
        return FcfsPolicy()
    if name == "priority":
        return PriorityPolicy()
    raise ValueError(f"scheduling policy must be 'fcfs' or 'priority', got {name!r}")
