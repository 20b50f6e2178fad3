"""The summary of scripts/serving_figures.sh's run (bench/serving_figures.py summary DIR):
everything the run wrote, as one table (stdout and summary.txt), summary.json, sweep.json
(the points of every `bench sweep` run, in `bench sweep --json`'s layout), and, where
matplotlib imports, sweep_latency.png (TTFT and ITL p50/p99 against request rate) and
sweep.png (`bench sweep --plot`'s chart)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SWEEP_GLOB = "sweep_rate_*.json"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _ms(stats: dict | None, key: str) -> float | None:
    """A bench serve latency stat (seconds) in ms."""
    return None if not stats or stats.get(key) is None else 1e3 * stats[key]


def _cell(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def burst_rows(out: Path) -> list[dict]:
    offline = _load(out / "offline.json") or {}
    by_num = {b["requests"]: b for b in offline.get("bursts", [])}
    rows = []
    for path in sorted(out.glob("serve_*.json"), key=lambda p: int(p.stem.split("_")[1])):
        serve = _load(path)
        if not serve:
            continue
        s = serve["summary"]
        num = s["num_requests"]
        off = by_num.get(num, {})
        step_p99 = (off.get("step_wall_ms") or {}).get("p99")
        rows.append({
            "requests": num, "completed": s["completed"], "failed": s["failed"],
            "offline_tok_s": off.get("output_tokens_per_s"),
            "daemon_tok_s": s["output_throughput"],
            "ratio": _ratio(s["output_throughput"], off.get("output_tokens_per_s")),
            "itl_p50_ms": _ms(s.get("itl"), "median"), "itl_p99_ms": _ms(s.get("itl"), "p99"),
            "ttft_p50_ms": _ms(s.get("ttft"), "median"), "ttft_p99_ms": _ms(s.get("ttft"), "p99"),
            "step_wall_p50_ms": (off.get("step_wall_ms") or {}).get("p50"),
            "step_wall_p99_ms": step_p99,
            "step_gpu_p99_ms": (off.get("step_gpu_ms") or {}).get("p99"),
            "offline_gap_p50_ms": (off.get("output_gap_ms") or {}).get("p50"),
            "offline_gap_p99_ms": (off.get("output_gap_ms") or {}).get("p99"),
            "itl_p99_over_step_p99": _ratio(_ms(s.get("itl"), "p99"), step_p99),
            "offline_preemptions": off.get("preemptions"),
        })
    for num, off in by_num.items():  # offline bursts whose daemon run is missing
        if not any(r["requests"] == num for r in rows):
            rows.append({"requests": num, "offline_tok_s": off.get("output_tokens_per_s"),
                         "step_wall_p50_ms": (off.get("step_wall_ms") or {}).get("p50"),
                         "step_wall_p99_ms": (off.get("step_wall_ms") or {}).get("p99"),
                         "step_gpu_p99_ms": (off.get("step_gpu_ms") or {}).get("p99"),
                         "offline_gap_p50_ms": (off.get("output_gap_ms") or {}).get("p50"),
                         "offline_gap_p99_ms": (off.get("output_gap_ms") or {}).get("p99")})
    return sorted(rows, key=lambda r: r["requests"])


def aiperf_row(out: Path) -> dict | None:
    aiperf = _load(out / "aiperf" / "profile_export_aiperf.json")
    if not aiperf:
        return None
    num = aiperf.get("request_count", {}).get("avg")
    serve = _load(out / f"serve_{int(num)}.json") if num else None
    serve_tok_s = serve["summary"]["output_throughput"] if serve else None
    aiperf_tok_s = aiperf["output_token_throughput"]["avg"]
    itl = aiperf.get("inter_token_latency") or {}
    return {"requests": num, "aiperf_tok_s": aiperf_tok_s, "bench_serve_tok_s": serve_tok_s,
            "ratio": _ratio(aiperf_tok_s, serve_tok_s),
            "aiperf_request_throughput": aiperf.get("request_throughput", {}).get("avg"),
            "aiperf_itl_p50_ms": itl.get("p50"), "aiperf_itl_p99_ms": itl.get("p99"),
            "aiperf_duration_s": aiperf.get("benchmark_duration", {}).get("avg"),
            "aiperf_errors": aiperf.get("error_summary"),
            "aiperf_version": aiperf.get("aiperf_version")}


def merged_sweep(out: Path) -> dict | None:
    """The points of every per-rate `bench sweep` run, by rate, in one document: `bench sweep
    --json`'s layout less the per-request records (which stay in the per-rate files)."""
    points, config = [], None
    for path in out.glob(SWEEP_GLOB):
        document = _load(path)
        if not document:
            continue
        config = config or document.get("config")
        points.extend({k: v for k, v in point.items() if k not in ("requests", "test_request")}
                      for point in document.get("points", []))
    if not points:
        return None
    points.sort(key=lambda p: float(p["request_rate"]))
    return {"config": config, "points": points}


def sweep_rows(sweep: dict | None) -> list[dict]:
    rows = []
    for point in (sweep or {}).get("points", []):
        s = point["summary"]
        rows.append({
            "rate": float(point["request_rate"]), "requests": s["num_requests"],
            "completed": s["completed"], "failed": s["failed"],
            "request_throughput": s["request_throughput"],
            "output_throughput": s["output_throughput"],
            **{f"{key}_{stat}_ms": _ms(s.get(key), name) for key in ("ttft", "itl", "tpot")
               for stat, name in (("p50", "median"), ("p99", "p99"))},
            "goodput": s.get("goodput"), "good_requests": s.get("good_requests"),
            "slo": s.get("slo")})
    return rows


def plot_sweep_latency(path: Path, rows: list[dict], *, title: str) -> None:
    """TTFT and ITL (p50 and p99) against request rate, and goodput beside them."""
    from matplotlib.figure import Figure

    rows = [r for r in rows if math.isfinite(r["rate"])]  # "inf" (all at once) has no x
    figure = Figure(figsize=(13, 4.5), layout="constrained")
    figure.suptitle(title)
    rates = [r["rate"] for r in rows]
    axes = figure.subplots(1, 3)
    for ax, key, label in zip(axes, ("ttft", "itl"), ("TTFT", "ITL")):
        for stat, style in (("p50", "o-"), ("p99", "^:")):
            ax.plot(rates, [r[f"{key}_{stat}_ms"] or math.nan for r in rows], style,
                    label=stat)
        ax.set_title(label)
        ax.set_xlabel("request rate (req/s, Poisson)")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    slo = next((r["slo"] for r in rows if r.get("slo")), {})
    limits = ", ".join(f"{k}<={v:g}s" for k, v in slo.items())
    axes[2].plot(rates, [r["request_throughput"] for r in rows], "s--", label="throughput")
    axes[2].plot(rates, [r["goodput"] or 0.0 for r in rows], "o-", label=f"goodput ({limits})")
    axes[2].plot(rates, rates, ":", color="grey", label="offered")
    axes[2].set_title("requests/s")
    axes[2].set_xlabel("request rate (req/s, Poisson)")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _summary_of(d: dict):
    from server.bench.metrics import BenchmarkSummary, LatencyStats

    fields = dict(d)
    for key in ("ttft", "tpot", "itl", "e2e"):
        fields[key] = LatencyStats(**d[key]) if d.get(key) else None
    return BenchmarkSummary(**fields)


def summary_command(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    offline = _load(out / "offline.json") or {}
    rates = _load(out / "rates.json")
    bursts = burst_rows(out)
    aiperf = aiperf_row(out)
    sweep = merged_sweep(out)
    sweep_table = sweep_rows(sweep)
    lines = [f"== serving figures ({offline.get('machine', '?')}, {offline.get('model', '?')}, "
             f"kv cache {offline.get('kv_cache_tokens', '?')} tokens, max_num_seqs "
             f"{offline.get('max_num_seqs', '?')}, prefix caching "
             f"{offline.get('prefix_caching', '?')})",
             "bursts: offline = LLM in one process; daemon = inflightd bench serve; step = the "
             "offline run's wall time per engine step; gap = offline time between a "
             "request's outputs",
             f"{'reqs':>5} {'offline':>9} {'daemon':>9} {'ratio':>6} {'ITL p50':>8} "
             f"{'ITL p99':>8} {'step p50':>8} {'step p99':>8} {'GPU p99':>8} "
             f"{'gap p50':>8} {'gap p99':>8} {'ITLp99/':>8} {'TTFT p50':>9} {'TTFT p99':>9}",
             f"{'':>5} {'tok/s':>9} {'tok/s':>9} {'':>6} {'ms':>8} {'ms':>8} {'ms':>8} "
             f"{'ms':>8} {'ms':>8} {'ms':>8} {'ms':>8} {'step p99':>8} {'ms':>9} {'ms':>9}"]
    for r in bursts:
        lines.append(
            f"{r['requests']:>5} {_cell(r.get('offline_tok_s'), ',.0f'):>9} "
            f"{_cell(r.get('daemon_tok_s'), ',.0f'):>9} {_cell(r.get('ratio'), '.3f'):>6} "
            f"{_cell(r.get('itl_p50_ms')):>8} {_cell(r.get('itl_p99_ms')):>8} "
            f"{_cell(r.get('step_wall_p50_ms')):>8} {_cell(r.get('step_wall_p99_ms')):>8} "
            f"{_cell(r.get('step_gpu_p99_ms')):>8} {_cell(r.get('offline_gap_p50_ms')):>8} "
            f"{_cell(r.get('offline_gap_p99_ms')):>8} "
            f"{_cell(r.get('itl_p99_over_step_p99'), '.2f'):>8} "
            f"{_cell(r.get('ttft_p50_ms'), ',.0f'):>9} {_cell(r.get('ttft_p99_ms'), ',.0f'):>9}")
    lines.append("acceptance: daemon/offline >= 0.97; ITL p99 <= 1.5x the engine's step p99")
    if aiperf:
        lines.append(
            f"aiperf {aiperf['aiperf_version']} ({_cell(aiperf['requests'], '.0f')} requests): "
            f"{_cell(aiperf['aiperf_tok_s'], ',.0f')} output tok/s, bench serve "
            f"{_cell(aiperf['bench_serve_tok_s'], ',.0f')}: ratio "
            f"{_cell(aiperf['ratio'], '.3f')} (acceptance: within 0.95-1.05); aiperf ITL p50 "
            f"{_cell(aiperf['aiperf_itl_p50_ms'])} / p99 {_cell(aiperf['aiperf_itl_p99_ms'])} ms")
    else:
        lines.append("aiperf: no result")
    if rates:
        lines.append(f"sweep: capacity {rates['capacity_rps']:.2f} req/s (= "
                     f"{rates['output_throughput']:,.0f} output tok/s of the sweep's prompts "
                     f"all at once, the rate=inf point / "
                     f"{rates['output_len']} output tokens), window {rates['window_s']:.1f} s "
                     f"a point")
    if sweep_table:
        slo = next((r["slo"] for r in sweep_table if r.get("slo")), {})
        lines.append(f"{'rate':>7} {'reqs':>5} {'ok':>5} {'req/s':>7} {'out tok/s':>9} "
                     f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} "
                     f"{'TPOT p50':>8} {'TPOT p99':>8} {'goodput':>8}  (ms; goodput req/s at "
                     + ", ".join(f"{k}<={v:g}s" for k, v in slo.items()) + ")")
        for r in sweep_table:
            lines.append(
                f"{r['rate']:>7.2f} {r['requests']:>5} {r['completed']:>5} "
                f"{r['request_throughput']:>7.2f} {r['output_throughput']:>9,.0f} "
                f"{_cell(r['ttft_p50_ms'], ',.0f'):>9} {_cell(r['ttft_p99_ms'], ',.0f'):>9} "
                f"{_cell(r['itl_p50_ms']):>8} {_cell(r['itl_p99_ms']):>8} "
                f"{_cell(r['tpot_p50_ms']):>8} {_cell(r['tpot_p99_ms']):>8} "
                f"{_cell(r['goodput'], '.2f'):>8}")
    else:
        lines.append("sweep: no result")
    text = "\n".join(lines)
    print(text)
    (out / "summary.txt").write_text(text + "\n")
    serve_runs = {}  # every bench serve run's summary and config, without its requests
    for path in out.glob("serve_*.json"):
        document = _load(path)
        if document:
            serve_runs[path.stem] = {"config": document.get("config"),
                                     "summary": document.get("summary")}
    write_result(str(out / "summary.json"),
           {"offline": offline, "bursts": bursts, "serve": serve_runs, "aiperf": aiperf,
            "rates": rates, "sweep": sweep_table})
    if sweep:
        write_result(str(out / "sweep.json"), sweep)
        title = f"{offline.get('model', '?')} on {offline.get('machine', '?')}, ShareGPT"
        try:
            from server.bench.report import plot_sweep

            plot_sweep_latency(out / "sweep_latency.png", sweep_table,
                               title=f"{title}: latency against request rate")
            plot_sweep(out / "sweep.png",
                       [(f"rate={float(p['request_rate']):g}", _summary_of(p["summary"]))
                        for p in sweep["points"]],
                       title=f"{title}: latency against throughput")
        except ImportError as exc:
            print(f"no PNG ({exc}); plot later with: python bench/serving_figures.py summary "
                  f"{out}")
    return 0


def write_result(path: str | None, document: dict) -> None:
    """As `inflightd bench` writes JSON: an infinite rate (or NaN) becomes a string."""
    if path:
        from server.bench.report import write_json

        write_json(path, document)
