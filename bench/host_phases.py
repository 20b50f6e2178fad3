"""The host's time per engine step, by phase, for the throughput benchmarks.

    schedule   Scheduler.schedule: the step's plan (plain data)
    prepare    the step's inputs on the host: DecodeStaging.fill for a graph replay,
               prepare_inputs for an eager step (part of launch)
    launch     the rest of ModelRunner.launch: copies, graph replay or eager kernel launches,
               sampling launches
    update     Scheduler.update: tokens appended, finished requests retired

With async scheduling all of it overlaps the GPU's previous step; the GPU idles only when a
step's phases add up to more than that step's GPU time, or when a garbage collection
stops the host (their count and time are reported too).
"""

from __future__ import annotations

import gc
import time
from contextlib import ExitStack, contextmanager

import server.engine.step.runner as runner_module

PHASES = ("schedule", "prepare", "launch", "update")


class HostPhases:
    """Wraps the engine's phase methods while entered; launch time comes from the StepTimer
    that wraps runner.launch (passed to ms_per_step)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.seconds = {"schedule": 0.0, "prepare": 0.0, "update": 0.0}
        self.num_steps = 0
        self.gc_collections = [0, 0, 0]
        self.gc_seconds = [0.0, 0.0, 0.0]
        self._gc_started = 0.0
        self._stack = ExitStack()

    def __enter__(self) -> "HostPhases":
        gc.callbacks.append(self._on_gc)
        scheduler, runner = self.engine.scheduler, self.engine.runner
        self._stack.enter_context(_timed(scheduler, "schedule", self, "schedule", count=True))
        self._stack.enter_context(_timed(scheduler, "update", self, "update"))
        self._stack.enter_context(_timed(runner_module, "prepare_inputs", self, "prepare"))
        if runner.graphs is not None:
            self._stack.enter_context(_timed(runner.graphs.staging, "fill", self, "prepare"))
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._on_gc)
        self._stack.close()

    def _on_gc(self, phase: str, info: dict) -> None:
        """Garbage collections stop the host: their count and time, by generation."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        generation = info["generation"]
        self.gc_seconds[generation] += time.perf_counter() - self._gc_started
        self.gc_collections[generation] += 1

    def gc_summary(self) -> dict:
        return {"gc_collections": list(self.gc_collections),
                "gc_ms": [round(1e3 * seconds, 1) for seconds in self.gc_seconds]}

    def ms_per_step(self, launch_seconds: float | None = None) -> dict[str, float]:
        """Mean milliseconds per scheduled step; launch excludes prepare."""
        steps = max(1, self.num_steps)
        result = {phase: 1e3 * seconds / steps for phase, seconds in self.seconds.items()}
        if launch_seconds is not None:
            result["launch"] = 1e3 * (launch_seconds - self.seconds["prepare"]) / steps
        result["total"] = sum(result.values())
        return {phase: round(ms, 3) for phase, ms in result.items()}


@contextmanager
def _timed(owner, name: str, phases: HostPhases, phase: str, *, count: bool = False):
    """owner.name replaced by a timed wrapper (an instance attribute or a module's), put
    back as it was on exit."""
    original = getattr(owner, name)
    had_own = name in vars(owner)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            phases.seconds[phase] += time.perf_counter() - start
            if count:
                phases.num_steps += 1

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
