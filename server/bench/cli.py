"""`inflightd bench serve|sweep|offline`: argument parsing and the three entry points.

server/cli.py calls `register(subparsers)`; each subcommand sets `func(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from server.bench.datasets import DatasetError, LengthRange, load_requests
from server.bench.metrics import SloError, parse_slo, summarize
from server.bench.offline import OfflineBenchmarkError, format_offline, run_offline
from server.bench.report import (format_summary, format_sweep, plot_latency_cdfs, plot_sweep,
                                 run_record, write_json)
from server.bench.serve import BenchmarkError, ServeConfig, run_requests
from server.bench.sweep import parse_rate, run_sweep, sweep_points
from server.bench.tokenizer import TokenizerNotFoundError, load_tokenizer
from server.config import DEFAULT_MODEL

USER_ERRORS = (BenchmarkError, DatasetError, SloError, TokenizerNotFoundError,
               OfflineBenchmarkError)


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmark a server or the engine",
                                  description="Serving and offline benchmarks.")
    bench.set_defaults(func=lambda _args: _print_help(bench))
    commands = bench.add_subparsers(dest="bench_command", metavar="{serve,sweep,offline}")

    serve = commands.add_parser("serve", help="benchmark an OpenAI-compatible endpoint")
    _add_workload_args(serve)
    _add_endpoint_args(serve)
    serve.add_argument("--request-rate", type=_rate_arg, default=math.inf,
                       help="requests per second, Poisson arrivals; inf sends all at once")
    serve.add_argument("--max-concurrency", type=int, default=None,
                       help="most requests in flight at once (default: no cap)")
    serve.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    serve.add_argument("--plot", metavar="PATH.png", help="write latency CDFs as a PNG")
    serve.set_defaults(func=_run_with_errors(_serve_command))

    sweep = commands.add_parser("sweep", help="the serving benchmark over several loads")
    _add_workload_args(sweep)
    _add_endpoint_args(sweep)
    sweep.add_argument("--request-rates", metavar="R1,R2,..",
                       help="one point per request rate, e.g. 1,2,4,inf")
    sweep.add_argument("--concurrencies", metavar="C1,C2,..",
                       help="one point per concurrency cap, e.g. 1,4,16")
    sweep.add_argument("--request-rate", type=_rate_arg, default=math.inf,
                       help="request rate of every point of a --concurrencies sweep")
    sweep.add_argument("--max-concurrency", type=int, default=None,
                       help="concurrency cap of every point of a --request-rates sweep")
    sweep.add_argument("--json", metavar="PATH", default="bench-sweep.json")
    sweep.add_argument("--plot", metavar="PATH.png", default="bench-sweep.png")
    sweep.set_defaults(func=_run_with_errors(_sweep_command))

    offline = commands.add_parser("offline", help="engine throughput with no HTTP")
    _add_workload_args(offline)
    offline.add_argument("--temperature", type=float, default=0.0)
    offline.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None,
                         help="generate exactly --output-len tokens (default: on for random)")
    offline.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16",
                                                             "bfloat16"))
    offline.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    offline.add_argument("--max-num-seqs", type=int, default=256)
    offline.add_argument("--max-num-batched-tokens", type=int, default=2048)
    offline.add_argument("--threads", type=int, default=None,
                         help="torch CPU threads (default: torch's own choice)")
    offline.add_argument("--json", metavar="PATH", help="write the result as JSON")
    offline.set_defaults(func=_run_with_errors(_offline_command))


def _add_workload_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model name to send (serve/sweep) or to load (offline)")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="tokenizer directory or GGUF file (default: --model if it is a "
                             "local path, else the default model's)")
    parser.add_argument("--dataset", default="random", help="random, sharegpt or FILE.jsonl")
    parser.add_argument("--dataset-path", type=Path, metavar="FILE", default=None,
                        help="with --dataset sharegpt: a ShareGPT-format JSON file to read "
                             "instead of the packaged 500-prompt sample")
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--input-len", type=_length_arg, default=LengthRange(128, 128),
                        help="random prompt tokens: N or LOW:HIGH")
    parser.add_argument("--output-len", type=_length_arg, default=LengthRange(128, 128),
                        help="max_tokens per request: N or LOW:HIGH")
    parser.add_argument("--seed", type=int, default=0)


def _add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--endpoint", choices=("completions", "chat", "triton"),
                        default="completions",
                        help="triton: Triton's generate_stream with TensorRT-LLM's inputs")
    parser.add_argument("--triton-model", default="ensemble", metavar="NAME",
                        help="with --endpoint triton: the model name in the URL")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="bearer token (default: $OPENAI_API_KEY)")
    parser.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None,
                        help="send ignore_eos so outputs reach --output-len (default: on for "
                             "random)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--slo", metavar="ttft=0.5,tpot=0.05",
                        help="latency limits in seconds for goodput (ttft, tpot, e2e)")
    parser.add_argument("--request-timeout", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument("--continuous-usage-stats", action="store_true",
                        help="ask for a token count on every chunk (vLLM extension) so ITLs "
                             "of multi-token chunks are split per token")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _length_arg(text: str) -> LengthRange:
    try:
        return LengthRange.parse(text)
    except DatasetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _rate_arg(text: str) -> float:
    try:
        return parse_rate(text)
    except BenchmarkError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _run_with_errors(command):
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except USER_ERRORS as exc:
            print(f"inflightd bench: error: {exc}", file=sys.stderr)
            return 2
    return run


def _samples(args: argparse.Namespace):
    tokenizer = load_tokenizer(tokenizer=args.tokenizer, model=args.model)
    samples = load_requests(dataset=args.dataset, tokenizer=tokenizer,
                            num_prompts=args.num_prompts, input_len=args.input_len,
                            output_len=args.output_len, seed=args.seed,
                            dataset_path=args.dataset_path)
    return tokenizer, samples


def _ignore_eos(args: argparse.Namespace) -> bool:
    """On by default for random prompts, whose outputs should have exactly --output-len tokens;
    off for real prompts, which may end where the model ends them."""
    return args.ignore_eos if args.ignore_eos is not None else args.dataset == "random"


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(base_url=args.base_url, model=args.model, endpoint=args.endpoint,
                       request_rate=args.request_rate, max_concurrency=args.max_concurrency,
                       api_key=args.api_key, ignore_eos=_ignore_eos(args),
                       temperature=args.temperature, request_timeout=args.request_timeout,
                       continuous_usage_stats=args.continuous_usage_stats, seed=args.seed,
                       show_progress=not args.no_progress, triton_model=args.triton_model)


def _run_config(args: argparse.Namespace, config: ServeConfig | None, tokenizer) -> dict[str, Any]:
    """What the JSON records about how the run was made (never the API key)."""
    recorded = {key: value for key, value in vars(args).items()
                if key not in ("func", "api_key") and not key.endswith("command")}
    recorded["ignore_eos"] = _ignore_eos(args)
    for key in ("input_len", "output_len"):
        recorded[key] = str(recorded[key])
    if config is not None:
        recorded.update({k: v for k, v in dataclasses.asdict(config).items() if k != "api_key"})
        recorded["url"] = config.url
    recorded["tokenizer"] = tokenizer.source
    recorded["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return recorded


def _serve_command(args: argparse.Namespace) -> int:
    slo = parse_slo(args.slo)
    config = _serve_config(args)
    tokenizer, samples = _samples(args)
    run = asyncio.run(run_requests(config, samples, tokenizer=tokenizer))
    summary = summarize(run.results, duration=run.duration, slo=slo)
    print(format_summary(summary))
    print(f"Client CPU: {run.client_cpu_seconds:.1f} s over {run.duration:.1f} s "
          f"({run.client_busy:.0%})")
    warning = run.client_warning()
    if warning:
        print(f"inflightd bench: warning: {warning}", file=sys.stderr)
    if args.json:
        write_json(args.json, {"config": _run_config(args, config, tokenizer),
                               **run_record(summary=summary, results=run.results,
                                            test_request=run.test_request),
                               "client_cpu_seconds": run.client_cpu_seconds})
    if args.plot:
        plot_latency_cdfs(args.plot, run.results, title=f"{args.model} @ {config.url}")
    return 0 if summary.completed else 1


def _sweep_command(args: argparse.Namespace) -> int:
    slo = parse_slo(args.slo)
    base = _serve_config(args)
    points = sweep_points(request_rates=args.request_rates, concurrencies=args.concurrencies,
                          base=base)
    tokenizer, samples = _samples(args)
    outcomes = asyncio.run(run_sweep(base, points, samples, tokenizer=tokenizer, slo=slo))
    labelled = [(o.point.label, o.summary) for o in outcomes]
    print(format_sweep(labelled))
    document = {"config": _run_config(args, base, tokenizer),
                "points": [{**dataclasses.asdict(o.point),
                            **run_record(summary=o.summary, results=o.run.results,
                                         test_request=o.run.test_request)}
                           for o in outcomes]}
    write_json(args.json, document)
    plot_sweep(args.plot, labelled, title=f"{args.model}: latency against throughput")
    return 0 if all(o.summary.completed for o in outcomes) else 1


def _offline_command(args: argparse.Namespace) -> int:
    tokenizer, samples = _samples(args)
    engine_kwargs = dict(dtype=args.dtype, device=args.device, max_num_seqs=args.max_num_seqs,
                         max_num_batched_tokens=args.max_num_batched_tokens)
    summary = run_offline(model=args.model, samples=samples, tokenizer=tokenizer,
                          temperature=args.temperature, ignore_eos=_ignore_eos(args),
                          seed=args.seed, threads=args.threads,
                          engine_kwargs=engine_kwargs)
    print(format_offline(summary))
    if args.json:
        write_json(args.json, {"config": _run_config(args, None, tokenizer),
                               "summary": dataclasses.asdict(summary)})
    return 0
