"""Helpers of scripts/serving_figures.sh (issue 20's GPU figures in one device call).

    offline       the bursts through the engine in this process (`LLM`, no HTTP), on exactly
                  the prompts `inflightd bench serve` sends with the same --seed, --input-len,
                  --output-len and tokenizer; output tok/s, and the engine's step time: wall
                  time between successive engine steps, GPU time of each launched step (CUDA
                  events, bench/gpu_probes.StepTimer), and the gaps between a request's
                  successive outputs (the offline counterpart of the client's ITL)
    aiperf-input  the same prompts as a JSONL file for aiperf (--custom-dataset-type
                  single_turn: {"text", "output_length"} a line)
    rates         the Poisson sweep's request rates and prompt counts: capacity (requests/s)
                  from a saturated burst's output tok/s over the sweep's output length (the
                  script's burst: the sweep's own prompts, all at once), the fractions of it,
                  and as many prompts per point as the time left allows
    summary       everything the run wrote, as one table (stdout), summary.json, sweep.json
                  (the points of every `bench sweep` run, in `bench sweep --json`'s layout),
                  and, where matplotlib imports, sweep_latency.png (TTFT and ITL p50/p99
                  against request rate) and sweep.png (`bench sweep --plot`'s chart)

The daemon itself exposes no step time (its /metrics has TTFT, ITL, E2E and iteration-token
histograms, not step durations), so the step-time reference is the offline run's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from server.bench.datasets import LengthRange, load_requests  # noqa: E402
from server.bench.metrics import percentile  # noqa: E402
from server.bench.tokenizer import load_tokenizer  # noqa: E402

SWEEP_GLOB = "sweep_rate_*.json"


def _stats_ms(values_s: list[float]) -> dict | None:
    """p50/p90/p99/max/mean in milliseconds of values in seconds."""
    if not values_s:
        return None
    ordered = sorted(values_s)
    return {"count": len(ordered), "mean": 1e3 * sum(ordered) / len(ordered),
            **{f"p{q}": 1e3 * percentile(ordered, q) for q in (50, 90, 99)},
            "max": 1e3 * ordered[-1]}


def _samples(tokenizer, *, dataset: str, num_prompts: int, input_len: str, output_len: str,
             seed: int):
    return load_requests(dataset=dataset, tokenizer=tokenizer, num_prompts=num_prompts,
                         input_len=LengthRange.parse(input_len),
                         output_len=LengthRange.parse(output_len), seed=seed)


# ---------------------------------------------------------------------------------- offline

def _timed_burst(llm, prompts: list[list[int]], output_lens: list[int]) -> dict:
    from bench.gpu_probes import StepTimer
    from bench.peers import sync
    from server.scheduler.request import SamplingParams

    engine = llm.engine
    device = engine.info.device
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4))  # warm-up
    # every run prefills every prompt: no prefix-cache hits from the warm-up or earlier runs
    engine.scheduler.block_manager.reset_prefix_cache()
    preemptions_before = engine.stats().num_preemptions
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in output_lens]
    step_returns: list[float] = []
    output_gaps: list[float] = []
    last_output: dict[str, float] = {}
    engine_step = engine.step

    def timed_step():
        outputs = engine_step()
        now = time.perf_counter()
        step_returns.append(now)
        for out in outputs:
            if out.new_token_ids:
                if out.req_id in last_output:
                    output_gaps.append(now - last_output[out.req_id])
                last_output[out.req_id] = now
        return outputs

    sync(device)
    engine.step = timed_step
    try:
        with StepTimer(engine.runner) as timer:
            start = time.perf_counter()
            completions = llm.generate(prompts, params, use_tqdm=False)
            sync(device)
            elapsed = time.perf_counter() - start
    finally:
        del engine.step  # back to the class's method
    num_out = sum(len(c.token_ids) for c in completions)
    step_periods = [b - a for a, b in zip([start, *step_returns], step_returns)]
    gpu = timer.step_gpu_ms()
    return {
        "requests": len(prompts), "input_tokens": sum(map(len, prompts)),
        "output_tokens": num_out, "seconds": elapsed,
        "output_tokens_per_s": num_out / elapsed,
        "request_throughput": len(prompts) / elapsed,
        "num_steps": len(step_periods),
        "preemptions": engine.stats().num_preemptions - preemptions_before,
        # wall time from one engine step's outputs to the next (async scheduling overlaps the
        # host's work with the GPU's: this is the step period a streaming client sees)
        "step_wall_ms": _stats_ms(step_periods),
        # GPU time of each launched step, from CUDA events on the stream around its work
        "step_gpu_ms": _stats_ms([ms / 1e3 for ms, _ in gpu]),
        "decode_step_gpu_ms": _stats_ms([ms / 1e3 for ms, decode in gpu if decode]),
        "mixed_step_gpu_ms": _stats_ms([ms / 1e3 for ms, decode in gpu if not decode]),
        # the gaps between a request's successive outputs in this process: the ITL a client
        # would see if the API path added nothing
        "output_gap_ms": _stats_ms(output_gaps),
        "steps": timer.summary(elapsed),
    }


def offline_command(args: argparse.Namespace) -> int:
    import torch

    from server.engine.llm import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(tokenizer=args.tokenizer, model=args.model)
    bursts = [int(n) for n in args.bursts.split(",") if n.strip()]
    cache = ({"kv_cache_tokens": args.kv_cache_tokens} if args.kv_cache_tokens
             else {"memory_fraction": args.memory_fraction})
    load_start = time.perf_counter()
    llm = LLM(args.model, dtype=args.dtype, device=args.device, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens,
              enable_prefix_caching=not args.no_prefix_caching, seed=args.seed, **cache)
    info = llm.engine.info
    result = {
        "model": info.model_name, "engine": args.model, "device": info.device, "dtype": info.dtype,
        "machine": (torch.cuda.get_device_name() if info.device.startswith("cuda")
                    else "CPU"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv), "load_seconds": time.perf_counter() - load_start,
        "kv_cache_tokens": info.kv_cache_tokens,
        "max_num_seqs": llm.engine.scheduler.config.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "prefix_caching": not args.no_prefix_caching,
        "async_scheduling": llm.engine.async_scheduling,
        "input_len": args.input_len, "output_len": args.output_len, "seed": args.seed,
        "bursts": []}
    for num in bursts:
        samples = _samples(tokenizer, dataset="random", num_prompts=num,
                           input_len=args.input_len, output_len=args.output_len, seed=args.seed)
        prompts = [tokenizer.encode(s.prompt) for s in samples]
        burst = _timed_burst(llm, prompts, [s.output_len for s in samples])
        result["bursts"].append(burst)
        _write(args.json, result)  # after each burst: a later timeout keeps this one
        print(f"offline burst {num}: {burst['output_tokens_per_s']:,.0f} output tok/s in "
              f"{burst['seconds']:.1f} s, {burst['num_steps']} steps, step wall ms "
              f"{_fmt(burst['step_wall_ms'])}, step GPU ms {_fmt(burst['step_gpu_ms'])}, "
              f"output gaps ms {_fmt(burst['output_gap_ms'])}, "
              f"{burst['preemptions']} preemptions", flush=True)
    return 0


def _fmt(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"p50 {stats['p50']:.1f} / p99 {stats['p99']:.1f} / max {stats['max']:.1f}"


def _write(path: str | None, document: dict) -> None:
    """As `inflightd bench` writes JSON: an infinite rate (or NaN) becomes a string."""
    if path:
        from server.bench.report import write_json

        write_json(path, document)


# ----------------------------------------------------------------------------- aiperf input

def aiperf_input_command(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(tokenizer=args.tokenizer, model=args.model)
    samples = _samples(tokenizer, dataset=args.dataset, num_prompts=args.num_prompts,
                       input_len=args.input_len, output_len=args.output_len, seed=args.seed)
    with open(args.output, "w") as out:
        for sample in samples:
            out.write(json.dumps({"text": sample.prompt, "output_length": sample.output_len})
                      + "\n")
    print(f"{len(samples)} prompts ({sum(s.prompt_len for s in samples)} tokens) -> "
          f"{args.output}")
    return 0


# ------------------------------------------------------------------------------------ rates

def plan_rates(*, output_throughput: float, itl_median_s: float | None, output_len: int,
               fractions: list[float], seconds: float, overhead_s: float,
               min_prompts: int, max_prompts: int) -> dict:
    """Capacity (requests/s) = a saturated burst's output tok/s / output_len. Each point's
    cost: its arrival window (N / rate), the drain of its last requests (output_len tokens at
    the burst's median ITL, plus the backlog of a rate above capacity), and a fixed overhead;
    the windows are as long as `seconds` allows, equal for every point."""
    capacity = output_throughput / output_len
    drain = min(30.0, max(3.0, output_len * (itl_median_s or 0.05)))
    backlog = sum(max(0.0, f - 1.0) for f in fractions)  # extra window shares to drain
    window = (seconds - len(fractions) * (drain + overhead_s)) / (len(fractions) + backlog)
    points = []
    for fraction in fractions:
        rate = capacity * fraction
        num = int(min(max_prompts, max(min_prompts, round(rate * max(window, 0.0)))))
        arrival = num / rate
        points.append({"fraction": fraction, "rate": round(rate, 3), "num_prompts": num,
                       "expected_seconds": arrival * (1 + max(0.0, fraction - 1.0))
                       + drain + overhead_s})
    return {"capacity_rps": capacity, "output_throughput": output_throughput,
            "output_len": output_len, "drain_s": drain, "window_s": window,
            "seconds_given": seconds, "points": points}


def rates_command(args: argparse.Namespace) -> int:
    document = json.loads(Path(args.burst_json).read_text())
    # a `bench serve` document, or a `bench sweep` one whose first point is the burst
    serve = document["summary"] if "summary" in document else document["points"][0]["summary"]
    itl = serve.get("itl") or {}
    plan = plan_rates(output_throughput=serve["output_throughput"],
                      itl_median_s=itl.get("median"), output_len=args.output_len,
                      fractions=[float(f) for f in args.fractions.split(",")],
                      seconds=args.seconds, overhead_s=args.overhead,
                      min_prompts=args.min_prompts, max_prompts=args.max_prompts)
    _write(args.json, plan)
    for point in plan["points"]:  # for the shell: RATE NUM_PROMPTS SECONDS_EXPECTED
        print(f"{point['rate']} {point['num_prompts']} {math.ceil(point['expected_seconds'])}")
    return 0


# ---------------------------------------------------------------------------------- summary

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
    _write(str(out / "summary.json"),
           {"offline": offline, "bursts": bursts, "serve": serve_runs, "aiperf": aiperf,
            "rates": rates, "sweep": sweep_table})
    if sweep:
        _write(str(out / "sweep.json"), sweep)
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


# -------------------------------------------------------------------------------------- cli

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def workload(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="engine directory or model to load")
        p.add_argument("--tokenizer", default=None, help="default: --model")
        p.add_argument("--input-len", default="128:1024")
        p.add_argument("--output-len", default="256")
        p.add_argument("--seed", type=int, default=1)

    offline = commands.add_parser("offline", help="the bursts through the engine, no HTTP")
    workload(offline)
    offline.add_argument("--bursts", default="512,1024", help="requests per burst, in order")
    offline.add_argument("--max-num-seqs", type=int, default=1024)
    offline.add_argument("--max-num-batched-tokens", type=int, default=8192)
    offline.add_argument("--memory-fraction", type=float, default=0.9)
    offline.add_argument("--kv-cache-tokens", type=int, default=None,
                         help="instead of --memory-fraction (CPU)")
    offline.add_argument("--no-prefix-caching", action="store_true")
    offline.add_argument("--dtype", default="auto")
    offline.add_argument("--device", default="auto")
    offline.add_argument("--threads", type=int, default=None)
    offline.add_argument("--json", required=True)
    offline.set_defaults(func=offline_command)

    aiperf = commands.add_parser("aiperf-input", help="the burst's prompts as aiperf JSONL")
    workload(aiperf)
    aiperf.add_argument("--dataset", default="random")
    aiperf.add_argument("--num-prompts", type=int, default=512)
    aiperf.add_argument("--output", required=True)
    aiperf.set_defaults(func=aiperf_input_command)

    rates = commands.add_parser("rates", help="the sweep's rates from a burst's throughput")
    rates.add_argument("--burst-json", required=True,
                       help="a saturated run: `bench serve` or `bench sweep` (first point) JSON")
    rates.add_argument("--output-len", type=int, default=256, help="the sweep's output tokens")
    rates.add_argument("--fractions", default="0.25,0.5,0.75,1,1.25")
    rates.add_argument("--seconds", type=float, required=True, help="time for all points")
    rates.add_argument("--overhead", type=float, default=6.0,
                       help="seconds per point besides arrivals and drain (start-up, prompts)")
    rates.add_argument("--min-prompts", type=int, default=16)
    rates.add_argument("--max-prompts", type=int, default=3000)
    rates.add_argument("--json", default=None)
    rates.set_defaults(func=rates_command)

    summary = commands.add_parser("summary", help="one table of everything in DIR")
    summary.add_argument("dir")
    summary.set_defaults(func=summary_command)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
