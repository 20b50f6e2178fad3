"""Offline throughput: the engine with no HTTP, next to transformers on the same requests.

CPU (issue 3): N ShareGPT chat prompts through the engine, batched, and the same prompts
through transformers `generate` one at a time; prints output tokens/s for both.

    python bench/offline.py --num-prompts 32 --output-len 64

GPU (issue 5): random bf16 weights of a real shape, built first into an engine directory in
the cache (as `inflightd serve MODEL` does; --no-engine-dir skips it) with its decode graphs
captured before any timing; batch-1 decode against the bandwidth roofline measured in the
same run, with where a step's time goes (GEMM-only floor, graph replay, host); then
throughput on many requests next to transformers' continuous batching (`generate_batch`)
and static batched `generate` on the first --peer-requests requests, run after the engine
is freed so both fit in GPU memory.

    python bench/offline.py --model dummy:llama-3-8b --num-prompts 512 \
        --input-len 128:1024 --output-len 256 --peer-requests 64

--compare-fp8 and --compare-fp8-kv run batch-1 decode and the throughput run again, in the
same process, on engines with FP8 linear layers, an e4m3 KV cache, or both.

--workload ISL/OSL[:N] runs TensorRT-LLM's throughput workloads instead (bench/workloads.py).

--tensor-parallel-size N splits the model over N ranks (GPUs 0..N-1): the roofline is then
one GPU's copy bandwidth over rank 0's share of the weights, i.e. N GPUs streaming their
shares at once; the padded graph replay is not timed (rank 0 cannot replay its all-reduces
alone).

Every run prints one table; docs/benchmarks.md records them with device, date, command.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.gpu_probes import (StepTimer, copy_bandwidth, gemm_floor_ms,  # noqa: E402
                              profile_decode, profile_mixed, profile_prefill)
from bench.peers import (hf_model, run_hf_continuous, run_hf_sequential,  # noqa: E402
                         run_hf_static, sync)
from bench.workloads import run_workloads  # noqa: E402
from server.bench.datasets import SHAREGPT_PATH  # noqa: E402
from server.config import KV_CACHE_DTYPES, QUANTIZATIONS  # noqa: E402
from server.engine.llm import LLM  # noqa: E402
from server.scheduler.request import SamplingParams  # noqa: E402

SHAREGPT = SHAREGPT_PATH


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", default=None,
                   help="random prompts of this many tokens (N or LO:HI); default: ShareGPT")
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--peer-requests", type=int, default=None,
                   help="run the transformers peers on the first K requests only (GPU)")
    p.add_argument("--peer-batch-size", type=int, default=64)
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="ranks to split the model over (one GPU each)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16, help="KV cache block size (tokens)")
    p.add_argument("--kv-admission", choices=("optimistic", "guaranteed"),
                   default="optimistic", help="the engine's --kv-admission")
    p.add_argument("--memory-fraction", type=float, default=None,
                   help="of the GPU memory free after the weights, for the KV cache "
                        "(default: the engine's, 0.9)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="the longest context (default: the model's; a model whose sliding "
                        "layers interleave with global ones runs on our kernels only within "
                        "its window)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for both the engine and the peers")
    p.add_argument("--no-engine-dir", action="store_true",
                   help="GPU: load the model as given instead of building its engine first")
    p.add_argument("--no-profile", action="store_true",
                   help="GPU: skip the per-kernel profile of decode steps (batch 1 and 256)")
    p.add_argument("--compare-sync", action="store_true",
                   help="GPU: also run batch-1 decode and the throughput run with async "
                        "scheduling off, in the same process")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                   help="the engine's --quantization")
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                   help="the engine's --kv-cache-dtype")
    p.add_argument("--compare-fp8", action="store_true",
                   help="GPU: then free the engine and run batch-1 decode and the throughput "
                        "run again on the same model with --quantization fp8")
    p.add_argument("--compare-fp8-kv", action="store_true",
                   help="GPU: the same again with --kv-cache-dtype fp8 (and, with "
                        "--compare-fp8, once more with both)")
    p.add_argument("--workload", action="append", default=None, metavar="ISL/OSL[:N]",
                   help="TensorRT-LLM's throughput workload instead (bench/workloads.py): N "
                        "(default --num-prompts) requests of ISL random tokens generating "
                        "exactly OSL each, all at once; repeat for several")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="--workload: sample at this temperature instead of greedily")
    p.add_argument("--top-p", type=float, default=1.0, help="--workload: with --temperature")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def make_prompts(llm: LLM, args: argparse.Namespace) -> list[list[int]]:
    rng = random.Random(args.seed)
    if args.input_len is None:
        if llm.tokenizer is None:
            raise SystemExit("this model has no tokenizer: give --input-len")
        chats = json.loads(SHAREGPT.read_text())[: args.num_prompts]
        return [list(llm.tokenizer.apply_chat_template(
            [{"role": "user", "content": c["conversations"][0]["value"]}],
            add_generation_prompt=True, tokenize=True, return_dict=False)) for c in chats]
    lo, _, hi = args.input_len.partition(":")
    lo, hi = int(lo), int(hi or lo)
    vocab = llm.engine.info.vocab_size
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(lo, hi))]
            for _ in range(args.num_prompts)]


def run_engine(llm: LLM, prompts: list[list[int]], output_len: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    mode = "async" if llm.engine.async_scheduling else "sync"
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4))  # warm-up
    # every run prefills every prompt: no prefix-cache hits from the warm-up or earlier runs
    llm.engine.scheduler.block_manager.reset_prefix_cache()
    device = llm.engine.info.device
    sync(device)
    with StepTimer(llm.engine.runner) as steps:
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=True)
        sync(device)
        elapsed = time.perf_counter() - start
    num_out = sum(len(o.token_ids) for o in outs)
    return {"name": f"{engine_label(llm)} (batched, {mode})", "requests": len(prompts),
            "seconds": elapsed,
            "output_tokens": num_out, "output_tokens_per_s": num_out / elapsed,
            "steps": steps.summary(elapsed)}


def batch1_decode(llm: LLM, output_len: int) -> dict:
    """Tokens/s of one request decoding alone, from its first token to its last."""
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    engine = llm.engine
    llm.generate([[102] * 32], SamplingParams(temperature=0, max_tokens=8))  # warm-up
    engine.add_request("batch1", [101] * 32, params)
    first = None
    device = engine.info.device
    count = 0
    while engine.has_unfinished():
        for out in engine.step():
            count += len(out.new_token_ids)
            if first is None and out.new_token_ids:
                sync(device)
                first, count = time.perf_counter(), 0
    sync(device)
    elapsed = time.perf_counter() - first
    mode = "async" if engine.async_scheduling else "sync"
    return {"name": f"{engine_label(llm)} batch-1 decode ({mode})", "output_tokens": count,
            "seconds": elapsed,
            "output_tokens_per_s": count / elapsed}


def print_table(rows: list[dict], header: str) -> None:
    print(f"\n{header}")
    print(f"{'run':<52} {'requests':>8} {'out tokens':>10} {'seconds':>8} {'tok/s':>9}")
    for r in rows:
        print(f"{r['name']:<52} {r.get('requests', 1):>8} {r['output_tokens']:>10} "
              f"{r['seconds']:>8.2f} {r['output_tokens_per_s']:>9.1f}")


def weight_bytes_of(llm: LLM) -> int:
    """Bytes of every weight tensor the model holds, a quantized weight's scales (and zero
    points) included; a tensor shared by two names (tied embeddings) counts once. Under
    tensor parallelism: rank 0's share, what each GPU streams a step."""
    return llm.engine.runner.model.num_parameter_bytes()


def streamed_bytes_of(llm: LLM) -> int:
    """The weight bytes a one-token decode step reads (rank 0's under tensor parallelism):
    weight_bytes_of less the input embedding tables, of which a step reads one row each
    (an untied token embedding is 1.05 GB of Llama-3-8B's bf16 weights)."""
    return llm.engine.runner.model.num_streamed_bytes()


def engine_label(llm: LLM) -> str:
    """'inflightd', plus its quantization ('fp8') and an e4m3 KV cache ('kv fp8')."""
    info = llm.engine.info
    options = ([info.quantization] if info.quantization else []) + (
        ["kv fp8"] if info.kv_cache_dtype.startswith("float8") else [])
    return " ".join(["inflightd", ", ".join(options)]) if options else "inflightd"


def engine_model(args: argparse.Namespace) -> tuple[str, float | None]:
    """On a GPU, the model's engine directory in the cache (built now unless it is there),
    as `inflightd serve MODEL` uses it; elsewhere the model as given."""
    if args.no_engine_dir or args.device == "cpu" or not torch.cuda.is_available():
        return args.model, None
    from server.engine.loading.build import ensure_engine_dir

    start = time.perf_counter()
    path = ensure_engine_dir(args.model, dtype=args.dtype, max_batch_size=args.max_num_seqs,
                             max_num_tokens=args.max_num_batched_tokens or 8192)
    return str(path), time.perf_counter() - start


def make_llm(model: str, args: argparse.Namespace, *, quantization: str | None,
             kv_cache_dtype: str, max_model_len: int | None = None) -> LLM:
    """max_model_len: the workload's own, else --max-model-len (None: the model's)."""
    extra = {}
    if args.max_num_batched_tokens:
        extra["max_num_batched_tokens"] = args.max_num_batched_tokens
    return LLM(model, device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
               seed=args.seed, block_size=args.block_size, quantization=quantization,
               kv_cache_dtype=kv_cache_dtype,
               max_model_len=max_model_len or getattr(args, "max_model_len", None),
               memory_fraction=args.memory_fraction,
               kv_admission=args.kv_admission,
               tensor_parallel_size=getattr(args, "tensor_parallel_size", 1), **extra)


def compared_variants(args: argparse.Namespace) -> list[tuple[str | None, str]]:
    """(quantization, kv_cache_dtype) of the engines run after the first one."""
    variants = []
    if args.compare_fp8_kv:
        variants.append((args.quantization, "fp8"))
    if args.compare_fp8:
        variants.append(("fp8", args.kv_cache_dtype))
    if args.compare_fp8 and args.compare_fp8_kv:
        variants.append(("fp8", "fp8"))
    return variants


def batch1_against_roofline(llm: LLM, output_len: int, *, weight_bytes: int,
                            copy_bandwidth_GBps: float) -> dict:
    """batch1_decode's run, with the roofline of streaming weight_bytes once per token, and
    (`streamed_`) that of the bytes a step reads (weight_bytes less the input embedding
    tables: streamed_bytes_of)."""
    b1 = batch1_decode(llm, output_len)
    b1["streamed_bytes"] = streamed_bytes_of(llm)
    b1.update(rooflines(b1["output_tokens_per_s"], copy_bandwidth_GBps=copy_bandwidth_GBps,
                        weight_bytes=weight_bytes, streamed_bytes=b1["streamed_bytes"]))
    return b1


def rooflines(tokens_per_s: float, *, copy_bandwidth_GBps: float, weight_bytes: int,
              streamed_bytes: int) -> dict:
    """A batch-1 rate against the copy bandwidth over the held weight bytes and over the
    bytes a step reads (streamed_bytes_of)."""
    held = copy_bandwidth_GBps * 1e9 / weight_bytes
    streamed = copy_bandwidth_GBps * 1e9 / streamed_bytes
    return {"roofline_tokens_per_s": held, "fraction_of_roofline": tokens_per_s / held,
            "streamed_roofline_tokens_per_s": streamed,
            "fraction_of_streamed_roofline": tokens_per_s / streamed}


def gpu_decode_probes(llm: LLM, result: dict, output_len: int) -> None:
    """Batch-1 decode against the roofline, and where its step time goes."""
    runner = llm.engine.runner
    start = time.perf_counter()
    runner.capture_graphs()
    result["graph_capture_seconds"] = time.perf_counter() - start
    result["copy_bandwidth_GBps"] = copy_bandwidth(llm.engine.info.device) / 1e9
    result["weight_bytes"] = weight_bytes_of(llm)
    b1 = batch1_against_roofline(llm, output_len, weight_bytes=result["weight_bytes"],
                                 copy_bandwidth_GBps=result["copy_bandwidth_GBps"])
    result["runs"].append(b1)
    breakdown = {"step_ms": 1e3 / b1["output_tokens_per_s"],
                 "gemm_floor_ms": gemm_floor_ms(runner.model, ops=runner.ops),
                 "cublas_gemm_floor_ms": gemm_floor_ms(runner.model)}
    if runner.graphs is not None and not runner.model.tp.enabled:
        breakdown["graph_replay_ms"] = runner.graphs.time_padded_replay(1)
    result["batch1_breakdown"] = breakdown


def free_gpu_memory(device: str = "") -> None:
    """Hands a dropped engine's memory back to the driver: the next engine sizes its KV cache
    from the free memory. Keyed on CUDA being in use, not on the device's name ("auto")."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_variant(llm: LLM, result: dict, prompts: list[list[int]],
                args: argparse.Namespace) -> None:
    """Batch-1 decode (against the roofline of this engine's weight bytes) and the
    throughput run on one of compared_variants' engines."""
    llm.engine.runner.capture_graphs()
    variant = {"engine": engine_label(llm), "weight_bytes": weight_bytes_of(llm),
               "kv_cache_tokens": llm.engine.info.kv_cache_tokens}
    result.setdefault("variants", []).append(variant)
    result["runs"].append(batch1_against_roofline(
        llm, args.output_len, weight_bytes=variant["weight_bytes"],
        copy_bandwidth_GBps=result["copy_bandwidth_GBps"]))
    result["runs"].append(run_engine(llm, prompts, args.output_len))
    variant["peak_gpu_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30


def run_peers(result: dict, source, dtype: torch.dtype, prompts, args) -> None:
    device = result["device"]
    peer_prompts = prompts[: args.peer_requests or len(prompts)]
    model = hf_model(source, dtype, device)
    if device.startswith("cuda"):
        peers = (lambda: run_hf_continuous(model, peer_prompts, args.output_len),
                 lambda: run_hf_static(model, peer_prompts, args.output_len, device,
                                       args.peer_batch_size))
    else:
        peers = (lambda: run_hf_sequential(model, peer_prompts, args.output_len, device),)
    for peer in peers:
        try:
            result["runs"].append(peer())
        except Exception as exc:  # a peer's failure must not hide the engine's figures
            result.setdefault("peer_errors", []).append(f"{type(exc).__name__}: {exc}")
            print(f"peer failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        save(result, args)


def save(result: dict, args: argparse.Namespace) -> None:
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def report(result: dict, args: argparse.Namespace) -> None:
    print_table(result["runs"], f"{args.model} on {result['machine']} ({result['dtype']}), "
                f"{result['num_prompts']} prompts (mean {result['mean_prompt_len']:.0f} "
                f"tokens), {args.output_len} output tokens each")
    for key in ("copy_bandwidth_GBps", "weight_bytes", "peak_gpu_memory_GiB", "kv_cache_tokens",
                "engine_build_seconds", "graph_capture_seconds"):
        if result.get(key) is not None:
            print(f"{key}: {result[key]:.2f}" if isinstance(result[key], float)
                  else f"{key}: {result[key]}")
    for variant in result.get("variants", ()):
        print(f"variant: {variant}")
    for key in ("batch1_breakdown", "decode_profile", "prefill_profile", "mixed_profile",
                "peer_errors"):
        if key in result:
            value = dict(result[key]) if key == "mixed_profile" else result[key]
            host_ops = value.pop("host_top_ops", None) if key == "mixed_profile" else None
            print(f"{key}: {value}")
            if host_ops:
                print(host_ops)
    engine_runs = [r for r in result["runs"] if "(batched" in r["name"]]
    for run in engine_runs:
        if "steps" in run:
            print(f"{run['name']} steps: {run['steps']}")
    for b1 in (r for r in result["runs"] if "fraction_of_roofline" in r):
        print(f"{b1['name']}: {b1['output_tokens_per_s']:.1f} tok/s = "
              f"{100 * b1['fraction_of_roofline']:.1f}% of roofline "
              f"({b1['roofline_tokens_per_s']:.1f} tok/s), "
              f"{100 * b1['fraction_of_streamed_roofline']:.1f}% of the streamed bytes' "
              f"({b1['streamed_roofline_tokens_per_s']:.1f} tok/s)")
    for r in result["runs"]:
        if r["name"].startswith("transformers"):
            for run in engine_runs:
                print(f"{run['name']} / {r['name']}: "
                      f"{run['output_tokens_per_s'] / r['output_tokens_per_s']:.2f}x")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workload:
        return {"workloads": run_workloads(args, make_llm=make_llm, engine_model=engine_model,
                                           free_memory=free_gpu_memory)}
    model, build_seconds = engine_model(args)
    llm = make_llm(model, args, quantization=args.quantization,
                   kv_cache_dtype=args.kv_cache_dtype)
    info = llm.engine.info
    device = info.device
    prompts = make_prompts(llm, args)
    result = {"model": args.model, "engine_dir": model if build_seconds is not None else None,
              "engine_build_seconds": build_seconds, "device": device, "dtype": info.dtype,
              "torch_threads": torch.get_num_threads(),
              "machine": torch.cuda.get_device_name() if device.startswith("cuda")
              else f"{platform.processor() or platform.machine()} CPU",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(sys.argv), "kv_cache_tokens": info.kv_cache_tokens,
              "num_prompts": len(prompts), "mean_prompt_len": sum(map(len, prompts)) / len(prompts),
              "output_len": args.output_len, "block_size": args.block_size,
              "programmatic_launch": getattr(getattr(llm.engine.runner.ops, "library", None),
                                             "programmatic_launch", False), "runs": []}
    if device.startswith("cuda"):
        gpu_decode_probes(llm, result, args.output_len)
        save(result, args)
    result["runs"].append(run_engine(llm, prompts, args.output_len))
    if device.startswith("cuda") and args.compare_sync:
        llm.engine.set_async_scheduling(False)
        result["runs"].append(batch1_against_roofline(
            llm, args.output_len, weight_bytes=result["weight_bytes"],
            copy_bandwidth_GBps=result["copy_bandwidth_GBps"]))
        result["runs"].append(run_engine(llm, prompts, args.output_len))
        llm.engine.set_async_scheduling(True)
        save(result, args)
    if device.startswith("cuda"):
        result["peak_gpu_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        if not args.no_profile:
            result["decode_profile"] = [
                profile_decode(llm, batch_size=1, context=1024),
                profile_decode(llm, batch_size=min(256, args.max_num_seqs), context=640)]
            result["prefill_profile"] = profile_prefill(llm)
            result["mixed_profile"] = profile_mixed(
                llm, num_decodes=min(256, args.max_num_seqs - 8))
    save(result, args)
    report(result, args)
    source, dtype = llm.engine.runner.source, llm.engine.runner.dtype
    del llm  # the next engine and the peers need the GPU memory its KV cache holds
    free_gpu_memory(device)
    variants = compared_variants(args) if device.startswith("cuda") else []
    for quantization, kv_cache_dtype in variants:
        torch.cuda.reset_peak_memory_stats()
        llm = make_llm(model, args, quantization=quantization, kv_cache_dtype=kv_cache_dtype)
        run_variant(llm, result, prompts, args)
        del llm
        free_gpu_memory(device)
        save(result, args)
        report(result, args)
    if not args.skip_peers:
        run_peers(result, source, dtype, prompts, args)
        report(result, args)
    return result


if __name__ == "__main__":
    main()
