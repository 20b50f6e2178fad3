"""CUDA graph capture that no garbage collection can break, and timing by graph replay.

During a capture, CUDA refuses calls such as destroying another graph, and the refusal
invalidates the capture. Python's cyclic garbage collector may run at any allocation and
free an unreachable engine (its graphs, pinned buffers) right then: so collect first, and
keep the collector off until the capture ends.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
from collections.abc import Callable, Iterator

import torch


@contextlib.contextmanager
def capturing(graph: torch.cuda.CUDAGraph, *, pool=None) -> Iterator[None]:
    """`with capturing(graph):` records the block's work on the current stream into graph."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, pool=pool):
            yield
    finally:
        if was_enabled:
            gc.enable()


def median_replay_ms(fn: Callable[[], object], *, calls: int = 1, replays: int = 20,
                     warmup: int = 3, device: torch.device | None = None) -> float:
    """Median milliseconds per call of fn, from `replays` replays of a graph of `calls`
    calls. fn runs once on a side stream first, so lazy loads and workspace sizing stay out
    of the graph."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        fn()
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with capturing(graph):
        for _ in range(calls):
            fn()
    for _ in range(warmup):
        graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)
