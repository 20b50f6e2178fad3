"""Per-request measurements and the summary a benchmark reports: latency percentiles,
throughputs and goodput under latency SLOs.

All times are seconds. TPOT of a request is its decode time spread over the tokens after the
first, (e2e - ttft) / (output_tokens - 1), so it is exact however the server chunks its stream;
ITLs are the gaps the client saw (see serve.py for how a multi-token chunk is split).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

SLO_METRICS = ("ttft", "tpot", "e2e")


class SloError(ValueError):
    """A --slo flag could not be read."""


@dataclass(frozen=True)
class RequestResult:
    """One request as the client saw it. `start` is seconds since the benchmark began."""

    success: bool
    prompt_len: int  # client tokenizer's count of the prompt
    output_len: int  # max_tokens asked for
    start: float
    prompt_tokens: int | None = None  # server's usage figure, None when it gave none
    output_tokens: int = 0  # from usage when given, else the tokenizer
    token_source: str = "usage"  # "usage" or "tokenizer"
    ttft: float | None = None
    itls: tuple[float, ...] = ()
    e2e: float | None = None
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if not self.success or self.output_tokens < 2 or self.ttft is None or self.e2e is None:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def input_tokens(self) -> int:
        return self.prompt_tokens if self.prompt_tokens is not None else self.prompt_len


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean: float
    median: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> LatencyStats | None:
        if not values:
            return None
        ordered = sorted(values)
        return cls(count=len(ordered), mean=math.fsum(ordered) / len(ordered),
                   median=percentile(ordered, 50), p90=percentile(ordered, 90),
                   p99=percentile(ordered, 99))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default):
    rank q/100 * (n - 1) in the sorted values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    weight = rank - below
    return ordered[below] + (ordered[above] - ordered[below]) * weight


def parse_slo(text: str | None) -> dict[str, float]:
    """`ttft=0.5,tpot=0.05` in seconds; a value may end in `ms` or `s`."""
    if not text:
        return {}
    slo: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip().lower()
        if not sep or name not in SLO_METRICS:
            raise SloError(f"--slo takes NAME=SECONDS pairs with NAME in {', '.join(SLO_METRICS)}, "
                           f"got {item!r}")
        slo[name] = _parse_seconds(value.strip(), item)
    return slo


def _parse_seconds(value: str, item: str) -> float:
    scale = 1.0
    if value.endswith("ms"):
        value, scale = value[:-2], 1e-3
    elif value.endswith("s"):
        value = value[:-1]
    try:
        seconds = float(value) * scale
    except ValueError as exc:
        raise SloError(f"--slo value must be a number of seconds, got {item!r}") from exc
    if not (math.isfinite(seconds) and seconds > 0):
        raise SloError(f"--slo value must be > 0, got {item!r}")
    return seconds


def meets_slo(result: RequestResult, slo: dict[str, float]) -> bool:
    """A failed request never meets an SLO; a request with one output token has no TPOT and
    so is not held to a TPOT limit."""
    if not result.success:
        return False
    measured = {"ttft": result.ttft, "tpot": result.tpot, "e2e": result.e2e}
    return all(measured[name] is None or measured[name] <= limit for name, limit in slo.items())


@dataclass(frozen=True)
class BenchmarkSummary:
    num_requests: int
    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft: LatencyStats | None
    tpot: LatencyStats | None
    itl: LatencyStats | None
    e2e: LatencyStats | None
    slo: dict[str, float] = field(default_factory=dict)
    good_requests: int | None = None  # None when no SLO was given
    goodput: float | None = None  # good requests per second
    errors: dict[str, int] = field(default_factory=dict)  # error message -> how many


def summarize(results: list[RequestResult], *, duration: float,
              slo: dict[str, float] | None = None) -> BenchmarkSummary:
    """Throughputs count completed requests only, over the wall time of the whole run."""
    if duration <= 0:
        raise ValueError(f"benchmark duration must be > 0, got {duration}")
    slo = slo or {}
    done = [r for r in results if r.success]
    input_tokens = sum(r.input_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    good = sum(meets_slo(r, slo) for r in done) if slo else None
    return BenchmarkSummary(
        num_requests=len(results), completed=len(done), failed=len(results) - len(done),
        duration=duration, total_input_tokens=input_tokens, total_output_tokens=output_tokens,
        request_throughput=len(done) / duration, output_throughput=output_tokens / duration,
        total_token_throughput=(input_tokens + output_tokens) / duration,
        ttft=LatencyStats.of([r.ttft for r in done if r.ttft is not None]),
        tpot=LatencyStats.of([r.tpot for r in done if r.tpot is not None]),
        itl=LatencyStats.of([gap for r in done for gap in r.itls]),
        e2e=LatencyStats.of([r.e2e for r in done if r.e2e is not None]),
        slo=dict(slo), good_requests=good,
        goodput=None if good is None else good / duration,
        errors=dict(Counter(r.error or "unknown error" for r in results if not r.success)))
