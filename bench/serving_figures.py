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
    summary       everything the run wrote, as one table, JSON and PNGs
                  (bench/serving_summary.py)

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
from bench.serving_summary import summary_command, write_result  # noqa: E402

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
        write_result(args.json, result)  # after each burst: a later timeout keeps this one
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
    write_result(args.json, plan)
    for point in plan["points"]:  # for the shell: RATE NUM_PROMPTS SECONDS_EXPECTED
        print(f"{point['rate']} {point['num_prompts']} {math.ceil(point['expected_seconds'])}")
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
