"""What grammars cost the engine's host per step: waiting for the previous step's tokens
(with async scheduling a constrained row cannot be masked before its matcher has them) and
filling the bitmask. Read by benchmarks; totals only, so it costs two clock reads a step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class GrammarStepTimes:
    num_steps: int = 0  # steps with at least one masked row
    num_rows: int = 0  # masked rows, summed over those steps
    wait_s: float = 0.0  # host time waiting for the step in flight (and its accepts)
    fill_s: float = 0.0  # host time filling bitmasks
    accept_s: float = 0.0  # host time feeding sampled tokens to the matchers

    @contextmanager
    def waiting(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.wait_s += time.perf_counter() - started

    @contextmanager
    def accepting(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.accept_s += time.perf_counter() - started

    @contextmanager
    def filling(self, num_rows: int) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.fill_s += time.perf_counter() - started
            self.num_steps += 1
            self.num_rows += num_rows

    def reset(self) -> None:
        self.num_steps = self.num_rows = 0
        self.wait_s = self.fill_s = self.accept_s = 0.0
