"""Every quantization scheme on one model, in one run (issue 21's GPU table): batch-1 decode
against the roofline of the scheme's own weight bytes, the many-request throughput and peak
memory, next to bf16 and to transformers (bf16, the same shape) at batch 1.

    python3 bench/quantized.py --model dummy:llama-3-8b --json FILE \
        [--schemes bf16,int8_wo,int4_wo,w8a8,fp8]

Per scheme, one engine at a time (each freed before the next is made), on the model's
engine directory as bench/offline.py builds it, quantized as its weights load:

    batch-1 tok/s  one request (32-token prompt) decoding --output-len tokens, from its first
                   token to its last (offline.batch1_decode)
    roofline       copy bandwidth (bytes read + written per second of a device-to-device copy,
                   measured once at the start) / the bytes of every weight the engine holds,
                   scales and zero points included: each weight streamed once per token
    throughput     offline.py's run: --num-prompts prompts of --input-len random tokens,
                   --output-len tokens each (ignore_eos), greedy, prefix cache emptied first
    peak GiB       the most memory torch held during the scheme's runs less its KV cache
                   pool: weights, activations, graphs. The pool takes the same fraction of
                   what is free for every scheme, so peaks with it would mostly show the
                   pool; its size in tokens is reported beside it
transformers: the bf16 model (random weights of the same shape) generating the same batch-1
request with `generate`: tok/s over its decode and the peak memory torch held (the seed's
comparison: INT8 weight-only against transformers in bf16).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # as bench/offline.py does

from bench import offline  # noqa: E402
from bench.gpu_probes import copy_bandwidth  # noqa: E402
from bench.peers import hf_model, sync  # noqa: E402
from server.config import QUANTIZATIONS  # noqa: E402

SCHEMES = ("bf16", *QUANTIZATIONS)  # bf16: no --quantization


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dummy:llama-3-8b")
    p.add_argument("--schemes", default=",".join(SCHEMES),
                   help=f"comma-separated, of {', '.join(SCHEMES)}")
    p.add_argument("--num-prompts", type=int, default=512)
    p.add_argument("--input-len", default="128:1024")
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=512)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--device", default=None, help="default: cuda when there is a GPU, else cpu")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = sorted(set(args.schemes) - set(SCHEMES))
    if unknown:
        p.error(f"unknown schemes {unknown}; choose from {', '.join(SCHEMES)}")
    return args


def offline_args(args: argparse.Namespace) -> argparse.Namespace:
    """bench/offline.py's options for the same runs, so its helpers read them."""
    argv = ["--model", args.model, "--num-prompts", str(args.num_prompts), "--input-len",
            args.input_len, "--output-len", str(args.output_len), "--max-num-seqs",
            str(args.max_num_seqs), "--max-num-batched-tokens",
            str(args.max_num_batched_tokens), "--skip-peers", "--no-profile"]
    return offline.parse_args(argv + ["--device", device_of(args)])


def device_of(args: argparse.Namespace) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def run_scheme(model: str, scheme: str, args: argparse.Namespace, *, copy_GBps: float | None,
               prompts: list[list[int]] | None) -> tuple[dict, list[list[int]]]:
    """One engine in this scheme: its batch-1 decode, throughput and peak memory."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    llm = offline.make_llm(model, args, quantization=None if scheme == "bf16" else scheme,
                           kv_cache_dtype="auto")
    device = llm.engine.info.device
    row = {"scheme": scheme, "load_seconds": time.perf_counter() - start,
           "weight_bytes": offline.weight_bytes_of(llm),
           "streamed_bytes": offline.streamed_bytes_of(llm),
           "kv_cache_tokens": llm.engine.info.kv_cache_tokens}
    prompts = prompts or offline.make_prompts(llm, args)
    if device.startswith("cuda"):
        llm.engine.runner.capture_graphs()
    b1 = offline.batch1_decode(llm, args.output_len)
    row["batch1_tokens_per_s"] = b1["output_tokens_per_s"]
    if copy_GBps:
        row.update(offline.rooflines(row["batch1_tokens_per_s"], copy_bandwidth_GBps=copy_GBps,
                                     weight_bytes=row["weight_bytes"],
                                     streamed_bytes=row["streamed_bytes"]))
    run = offline.run_engine(llm, prompts, args.output_len)
    row["throughput_tokens_per_s"] = run["output_tokens_per_s"]
    row["throughput_seconds"] = run["seconds"]
    if device.startswith("cuda"):
        pool_bytes = llm.engine.runner.kv_pool.num_bytes
        row["peak_GiB_without_kv_pool"] = (torch.cuda.max_memory_allocated() - pool_bytes) / 2**30
        row["kv_pool_GiB"] = pool_bytes / 2**30
    del llm
    offline.free_gpu_memory(device)
    return row, prompts


def transformers_batch1(source, args: argparse.Namespace, device: str) -> dict:
    """transformers `generate` on the same batch-1 request, bf16: decode tok/s, peak memory."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model = hf_model(source, torch.bfloat16, device)
    prompt = torch.tensor([[101] * 32], device=device)

    def generate(new_tokens: int) -> float:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)
        sync(device)
        return time.perf_counter() - start

    generate(4)  # warm-up
    # decode rate: the full run less a run of one token (prefill and first token)
    decode_seconds = generate(args.output_len) - generate(1)
    row = {"scheme": "transformers bf16",
           "batch1_tokens_per_s": (args.output_len - 1) / decode_seconds}
    if device.startswith("cuda"):
        row["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    del model
    offline.free_gpu_memory(device)
    return row


def print_rows(rows: list[dict]) -> None:
    def cell(value, spec: str, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"

    print(f"\n{'scheme':<18} {'weights GB':>10} {'batch-1':>9} {'roofline':>9} {'of it':>6} "
          f"{'streamed':>8} {'throughput':>10} {'peak GiB':>9} {'kv tokens':>10}")
    for r in rows:
        weights = r["weight_bytes"] / 1e9 if "weight_bytes" in r else None
        fraction = r.get("fraction_of_roofline")
        streamed = r.get("fraction_of_streamed_roofline")
        print(f"{r['scheme']:<18} {cell(weights, '.2f', 10)} "
              f"{cell(r['batch1_tokens_per_s'], '.1f', 9)} "
              f"{cell(r.get('roofline_tokens_per_s'), '.1f', 9)} "
              f"{cell(None if fraction is None else 100 * fraction, '.1f', 6)} "
              f"{cell(None if streamed is None else 100 * streamed, '.1f', 8)} "
              f"{cell(r.get('throughput_tokens_per_s'), '.1f', 10)} "
              f"{cell(r.get('peak_GiB_without_kv_pool', r.get('peak_GiB')), '.2f', 9)} "
              f"{cell(r.get('kv_cache_tokens'), 'd', 10)}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run_args = offline_args(args)
    device = device_of(args)
    model, _ = offline.engine_model(run_args)
    result = {"model": args.model, "command": " ".join(sys.argv), "device": device,
              "machine": torch.cuda.get_device_name() if device.startswith("cuda") else "CPU",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    if device.startswith("cuda"):
        result["copy_bandwidth_GBps"] = copy_bandwidth(device) / 1e9
    prompts = None
    for scheme in args.schemes:
        row, prompts = run_scheme(model, scheme, run_args, prompts=prompts,
                                  copy_GBps=result.get("copy_bandwidth_GBps"))
        result["rows"].append(row)
        save(result, args)
        print_rows(result["rows"])
    if not args.skip_transformers:
        from server.engine.loading.weights import resolve_model

        result["rows"].append(transformers_batch1(resolve_model(args.model), args, device))
        save(result, args)
    print_rows(result["rows"])
    return result


def save(result: dict, args: argparse.Namespace) -> None:
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
