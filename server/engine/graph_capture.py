"""CUDA graph capture that no garbage collection can break.

During a capture, CUDA refuses calls such as destroying another graph, and the refusal
invalidates the capture. Python's cyclic garbage collector may run at any allocation and
free an unreachable engine (its graphs, pinned buffers) right then: so collect first, and
keep the collector off until the capture ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

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
