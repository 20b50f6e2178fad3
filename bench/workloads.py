"""TensorRT-LLM's throughput workloads, run as `trtllm-bench throughput` defines them.

    python3 bench/offline.py --model dummy:llama-3.1-8b --quantization fp8 \
        --kv-cache-dtype fp8 --max-num-seqs 1024 --max-num-batched-tokens 8192 \
        --workload 128/2048 --num-prompts 1000

Each request is ISL random token ids and generates exactly OSL tokens (ignore_eos), and all
of them are submitted at once. The engine is limited to ISL + OSL tokens of context, as
trtllm-bench sizes its engine for the dataset. Requests are admitted optimistically (the
engine's default): when all of them cannot hold their whole length in the KV cache at once
(1,000 of 128/2048 need 2.18M tokens), the newest are preempted late and recomputed, which
costs less than `--kv-admission guaranteed` (TensorRT-LLM's GUARANTEED_NO_EVICT), under which
the requests that do not fit wait and then decode all of OSL in a small batch of their own. Printed beside the output tokens/s: the GPU
time of decode-only and mixed steps and the GPU's idle time between steps (CUDA events
around each launched step), the host's time per step by phase, the SM clock and board power
(nvidia-smi samples), peak memory, KV cache capacity, and the ratio to TensorRT-LLM's own
figure for the workload.
"""

from __future__ import annotations

import gc
import json
import random
import time

import torch

from bench.gemm import PowerSampler
from bench.gpu_probes import StepTimer
from bench.host_phases import HostPhases
from server.scheduler.request import SamplingParams

# Output tokens/s of Llama-3.1-8B with FP8 weights on one H200, `trtllm-bench throughput`
# (TensorRT-LLM v1.0 documentation, "Performance Overview"), by (ISL, OSL).
TRTLLM_H200_FP8_TOKENS_PER_S = {
    (128, 2048): 26_221, (1000, 1000): 17_744, (2048, 2048): 12_194, (2048, 128): 3_538,
    (5000, 500): 3_902, (20000, 2000): 1_804,
}
# The request counts TensorRT-LLM ran them with.
TRTLLM_NUM_REQUESTS = {(128, 2048): 3000, (1000, 1000): 3000, (2048, 2048): 1500,
                       (2048, 128): 3000, (5000, 500): 1500, (20000, 2000): 1000}


class WorkloadError(ValueError):
    """A --workload that is not ISL/OSL with two positive integers."""


def parse_workload(text: str) -> tuple[int, int]:
    """"128/2048" -> (128, 2048)."""
    isl, sep, osl = text.partition("/")
    if not sep or not isl.isdigit() or not osl.isdigit() or not int(isl) or not int(osl):
        raise WorkloadError(f"--workload takes ISL/OSL, two positive token counts such as "
                            f"128/2048; got {text!r}")
    return int(isl), int(osl)


def random_prompts(*, num_prompts: int, input_len: int, vocab_size: int,
                   seed: int) -> list[list[int]]:
    """Exactly input_len random ids each, away from the low ids that special tokens use."""
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab_size) for _ in range(input_len)]
            for _ in range(num_prompts)]


def run_workload(llm, *, input_len: int, output_len: int, num_prompts: int,
                 seed: int = 0, temperature: float = 0.0, top_p: float = 1.0) -> dict:
    """Every request at once, to the end; the figures listed in the module docstring.
    Greedy as trtllm-bench, unless a temperature is given (unseeded sampling, which runs on
    the device and keeps async scheduling on)."""
    engine = llm.engine
    prompts = random_prompts(num_prompts=num_prompts, input_len=input_len,
                             vocab_size=engine.info.vocab_size, seed=seed)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=output_len,
                            ignore_eos=True)
    # warm-up, within the engine's context limit of ISL + OSL
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=min(4, output_len)))
    engine.scheduler.block_manager.reset_prefix_cache()
    cuda = engine.info.device.startswith("cuda")
    gc.collect()
    gc.freeze()  # as the engine process does after start-up (server/engine/service/process.py)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with StepTimer(engine.runner) as steps, HostPhases(engine) as phases, \
            PowerSampler(interval_ms=500, enabled=cuda) as power:
        start = time.perf_counter()
        outs = llm.generate(prompts, params)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    gc.unfreeze()  # so the engine can be freed once the caller drops it
    num_out = sum(len(o.token_ids) for o in outs)
    if num_out != num_prompts * output_len:
        raise RuntimeError(f"expected {num_prompts * output_len} output tokens, got {num_out}")
    step_summary = steps.summary(elapsed)
    result = {
        "workload": f"{input_len}/{output_len}", "requests": num_prompts,
        "temperature": temperature, "top_p": top_p,
        "seconds": elapsed, "output_tokens": num_out,
        "output_tokens_per_s": num_out / elapsed,
        "total_tokens_per_s": num_prompts * (input_len + output_len) / elapsed,
        "steps": step_summary,
        "idle_fraction": step_summary.get("idle_between_steps_seconds", 0.0) / elapsed,
        "host_ms_per_step": phases.ms_per_step(steps.launch_seconds),
        "gc": phases.gc_summary(),
        "power": power.summary(),
        "kv_cache_tokens": engine.info.kv_cache_tokens,
        "preemptions": engine.stats().num_preemptions,
        "max_num_seqs": engine.scheduler.config.max_num_seqs,
    }
    if cuda:
        result["peak_gpu_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    peer = TRTLLM_H200_FP8_TOKENS_PER_S.get((input_len, output_len))
    if peer is not None:
        result["trtllm_h200_fp8_tokens_per_s"] = peer
        result["trtllm_requests"] = TRTLLM_NUM_REQUESTS[(input_len, output_len)]
        result["of_trtllm"] = result["output_tokens_per_s"] / peer
    return result


def parse_workloads(texts: list[str], *, default_requests: int) -> list[tuple[int, int, int]]:
    """["128/2048:1000", "1000/1000"] -> [(128, 2048, 1000), (1000, 1000, default)]."""
    workloads = []
    for text in texts:
        shape, _, count = text.partition(":")
        if count and not count.isdigit():
            raise WorkloadError(f"--workload ISL/OSL[:REQUESTS] takes a request count after "
                                f"the colon; got {text!r}")
        workloads.append((*parse_workload(shape), int(count) if count else default_requests))
    return workloads


def run_workloads(args, *, make_llm, engine_model, free_memory) -> list[dict]:
    """bench/offline.py --workload: each workload on its own engine (its context limit is
    ISL + OSL), built from one engine directory, freed before the next."""
    model, build_seconds = engine_model(args)
    results = []
    for input_len, output_len, num_prompts in parse_workloads(
            args.workload, default_requests=args.num_prompts):
        llm = make_llm(model, args, quantization=args.quantization,
                       kv_cache_dtype=args.kv_cache_dtype,
                       max_model_len=input_len + output_len)
        # captured when the engine started; no reference to the graphs may outlive llm
        capture_seconds = getattr(llm.engine.runner.graphs, "capture_seconds", None)
        result = run_workload(llm, input_len=input_len, output_len=output_len,
                              num_prompts=num_prompts, seed=args.seed,
                              temperature=args.temperature, top_p=args.top_p)
        result.update(engine_build_seconds=build_seconds,
                      graph_capture_seconds=capture_seconds,
                      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
                      kv_admission=llm.engine.scheduler.config.kv_admission)
        label = (f"inflightd ({args.quantization or 'model-dtype'} weights, "
                 f"{args.kv_cache_dtype} KV cache)")
        print_workload(result, label)
        results.append(result)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        llm.close()
        del llm  # the next workload's engine takes the KV cache's memory fraction again
        free_memory()
    return results


def print_workload(result: dict, label: str) -> None:
    steps = result["steps"]
    line = (f"{label} {result['workload']} x {result['requests']}: "
            f"{result['output_tokens_per_s']:,.0f} output tok/s, "
            f"{result['total_tokens_per_s']:,.0f} total tok/s in {result['seconds']:.1f} s")
    if "of_trtllm" in result:
        line += (f"; {100 * result['of_trtllm']:.0f}% of TensorRT-LLM's "
                 f"{result['trtllm_h200_fp8_tokens_per_s']:,} (H200, FP8)")
    print(line)
    print(f"  steps: {steps}")
    print(f"  GPU idle between steps: {100 * result['idle_fraction']:.2f}% of the wall time")
    print(f"  host ms per step: {result['host_ms_per_step']}; {result['gc']}")
    print(f"  power and clock: {result['power']}")
    print(f"  KV cache {result['kv_cache_tokens']:,} tokens ({result['preemptions']} "
          f"preemptions), peak GPU memory "
          f"{result.get('peak_gpu_memory_GiB', float('nan')):.1f} GiB")
