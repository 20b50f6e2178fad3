"""A sweep: the serving benchmark once per request rate or per concurrency cap, over the same
prompts, so latency percentiles can be read against the throughput each load reached."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from server.bench.datasets import SampleRequest, Tokenizer
from server.bench.metrics import BenchmarkSummary, summarize
from server.bench.serve import (BenchmarkError, ServeConfig, ServeRun, make_client,
                                run_requests)


@dataclass(frozen=True)
class SweepPoint:
    label: str  # "rate=2" or "conc=4"
    request_rate: float
    max_concurrency: int | None


@dataclass(frozen=True)
class SweepResult:
    point: SweepPoint
    run: ServeRun
    summary: BenchmarkSummary


def parse_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError as exc:
        raise BenchmarkError(f"a request rate is a number or inf, got {text!r}") from exc
    if not rate > 0:
        raise BenchmarkError(f"a request rate must be > 0 or inf, got {text!r}")
    return rate


def sweep_points(*, request_rates: str | None, concurrencies: str | None,
                 base: ServeConfig) -> list[SweepPoint]:
    """Points from exactly one of `--request-rates 1,2,inf` or `--concurrencies 1,4,16`; the
    other knob keeps its value from `base`."""
    if (request_rates is None) == (concurrencies is None):
        raise BenchmarkError("give exactly one of --request-rates or --concurrencies")
    if request_rates is not None:
        rates = [parse_rate(item.strip()) for item in request_rates.split(",") if item.strip()]
        points = [SweepPoint(f"rate={_rate_label(r)}", r, base.max_concurrency) for r in rates]
    else:
        points = [SweepPoint(f"conc={c}", base.request_rate, c)
                  for c in _parse_concurrencies(concurrencies or "")]
    if not points:
        raise BenchmarkError("the sweep has no points")
    return points


def _parse_concurrencies(text: str) -> list[int]:
    values = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise BenchmarkError(f"a concurrency is a positive integer, got {item!r}")
        values.append(int(item))
    return values


def _rate_label(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


async def run_sweep(base: ServeConfig, points: list[SweepPoint], samples: list[SampleRequest],
                    *, tokenizer: Tokenizer, slo: dict[str, float]) -> list[SweepResult]:
    """Points run one after another on one connection pool, each over the same samples."""
    outcomes = []
    async with make_client(base) as client:
        for point in points:
            config = dataclasses.replace(base, request_rate=point.request_rate,
                                         max_concurrency=point.max_concurrency)
            run = await run_requests(config, samples, tokenizer=tokenizer, client=client)
            summary = summarize(run.results, duration=run.duration, slo=slo)
            outcomes.append(SweepResult(point, run, summary))
    return outcomes
