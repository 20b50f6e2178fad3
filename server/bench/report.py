"""How results leave the benchmark: a text table, a JSON document, and PNG charts.

Times are seconds in JSON and milliseconds in tables and charts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from server.bench.metrics import BenchmarkSummary, LatencyStats, RequestResult

LATENCY_ROWS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E latency"))


def format_summary(summary: BenchmarkSummary, *, title: str = "Serving benchmark") -> str:
    rows = [
        ("Successful requests", f"{summary.completed}"),
        ("Failed requests", f"{summary.failed}"),
        ("Benchmark duration (s)", f"{summary.duration:.2f}"),
        ("Total input tokens", f"{summary.total_input_tokens}"),
        ("Total output tokens", f"{summary.total_output_tokens}"),
        ("Request throughput (req/s)", f"{summary.request_throughput:.2f}"),
        ("Output token throughput (tok/s)", f"{summary.output_throughput:.2f}"),
        ("Total token throughput (tok/s)", f"{summary.total_token_throughput:.2f}"),
    ]
    if summary.goodput is not None:
        limits = ", ".join(f"{name}<={seconds:g}s" for name, seconds in summary.slo.items())
        rows.append((f"Goodput (req/s) [{limits}]",
                     f"{summary.goodput:.2f} ({summary.good_requests}/{summary.num_requests})"))
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{f' {title} ':=^{width + 14}}"]
    lines += [f"{label + ':':<{width}}{value:>14}" for label, value in rows]
    lines.append(f"{' Latency (ms) ':-^{width + 14}}")
    lines.append(f"{'':<12}{'mean':>10}{'median':>10}{'p90':>10}{'p99':>10}")
    for key, label in LATENCY_ROWS:
        stats: LatencyStats | None = getattr(summary, key)
        if stats is None:
            lines.append(f"{label:<12}{'-':>10}{'-':>10}{'-':>10}{'-':>10}")
            continue
        values = (stats.mean, stats.median, stats.p90, stats.p99)
        lines.append(f"{label:<12}" + "".join(f"{v * 1e3:>10.2f}" for v in values))
    if summary.errors:
        lines.append(f"{' Errors ':-^{width + 14}}")
        lines += [f"{count:>5} x {message}" for message, count in summary.errors.items()]
    lines.append("=" * (width + 14))
    return "\n".join(lines)


def run_record(*, summary: BenchmarkSummary, results: list[RequestResult],
               test_request: RequestResult) -> dict[str, Any]:
    """`test_request` is the untimed request sent first; a server's own token counters
    include it."""
    return {"summary": asdict(summary), "test_request": request_record(test_request),
            "requests": [request_record(r) for r in results]}


def request_record(result: RequestResult) -> dict[str, Any]:
    record = asdict(result)
    record["itls"] = list(result.itls)
    record["tpot"] = result.tpot
    return record


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(document), indent=2, allow_nan=False)
    Path(path).write_text(text + "\n")


def _finite(value: Any) -> Any:
    """JSON has no infinity; an infinite request rate is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def format_sweep(points: list[tuple[str, BenchmarkSummary]]) -> str:
    header = (f"{'point':>10}{'ok':>5}{'fail':>5}{'req/s':>8}{'out tok/s':>11}"
              f"{'TTFT p50':>10}{'TTFT p99':>10}{'TPOT p50':>10}{'TPOT p99':>10}"
              f"{'E2E p50':>10}{'E2E p99':>10}{'goodput':>9}")
    lines = [header, "-" * len(header)]
    for label, s in points:
        goodput = "-" if s.goodput is None else f"{s.goodput:.2f}"
        lines.append(f"{label:>10}{s.completed:>5}{s.failed:>5}{s.request_throughput:>8.2f}"
                     f"{s.output_throughput:>11.2f}"
                     + "".join(f"{_ms(getattr(s, key), stat):>10.1f}"
                               for key in ("ttft", "tpot", "e2e") for stat in ("median", "p99"))
                     + f"{goodput:>9}")
    lines.append("(latencies in ms)")
    return "\n".join(lines)


def plot_latency_cdfs(path: str | Path, results: list[RequestResult], *, title: str) -> None:
    """One panel per latency metric: the share of requests (of tokens, for ITL) at or under a
    latency, so medians and tails read off the same curve."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    done = [r for r in results if r.success]
    series = {"TTFT": [r.ttft for r in done if r.ttft is not None],
              "TPOT": [r.tpot for r in done if r.tpot is not None],
              "ITL": [gap for r in done for gap in r.itls],
              "E2E latency": [r.e2e for r in done if r.e2e is not None]}
    figure = Figure(figsize=(10, 7), layout="constrained")
    figure.suptitle(title)
    for axes, (label, values) in zip(figure.subplots(2, 2).flat, series.items()):
        ordered = sorted(v * 1e3 for v in values)
        if ordered:
            shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
            axes.step(ordered, shares, where="post")
        axes.set_title(f"{label} ({len(ordered)} samples)")
        axes.set_xlabel("ms")
        axes.set_ylabel("fraction <= x")
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
    _save(figure, path)


def plot_sweep(path: str | Path, points: list[tuple[str, BenchmarkSummary]], *,
               title: str) -> None:
    """Latency percentiles against output token throughput, one marker per sweep point."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.5), layout="constrained")
    figure.suptitle(title)
    throughputs = [summary.output_throughput for _, summary in points]
    for axes, key, label in zip(figure.subplots(1, 3), ("ttft", "tpot", "e2e"),
                                ("TTFT", "TPOT", "E2E latency")):
        for stat, style in (("median", "o-"), ("p90", "s--"), ("p99", "^:")):
            values = [_ms(getattr(summary, key), stat) for _, summary in points]
            axes.plot(throughputs, values, style, label=stat)
        for (point_label, _), x, y in zip(points, throughputs,
                                          [_ms(getattr(s, key), "median") for _, s in points]):
            axes.annotate(point_label, (x, y), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
        axes.set_title(label)
        axes.set_xlabel("output throughput (tok/s)")
        axes.set_ylabel("ms")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    _save(figure, path)


def _ms(stats: LatencyStats | None, stat: str) -> float:
    return float("nan") if stats is None else getattr(stats, stat) * 1e3


def _save(figure: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
