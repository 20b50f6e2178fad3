"""Weight prefetch into L2 (csrc/prefetch.cu, ops/cuda_prefetch.py) on the GPU: what it buys
a GEMV, and batch-1 decode with it off and on.

    hop probe     what a prefetch kernel costs a chain of small kernels (the wait it adds)
    gemv probe    one GEMV's time after L2 is flushed, cold, and after the prefetch of its
                  weight's head was launched GAP µs before it (a spinning kernel in
                  between stands for the norms and attention that run there in a step),
                  for several chunk sizes and from 1 to all SMs: how fast the prefetch
                  fills L2, and what the GEMV gains from it
    decode        batch-1 decode tok/s (bench/offline.py's measure) of each model, engines
                  built with INFLIGHTD_PREFETCH_WEIGHTS 0 and 1, in turn, twice, against the
                  roofline of copy bandwidth over weight bytes

    python bench/weight_prefetch.py [--models dummy:gpt2-xl,dummy:llama-3-8b@int4_wo,...]
        [--output-len 256] [--rounds 1] [--skip-gemv] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_probes import copy_bandwidth  # noqa: E402
from server.engine.gpu.graph_capture import median_replay_ms  # noqa: E402
from bench.offline import batch1_decode, free_gpu_memory, weight_bytes_of  # noqa: E402
from server.engine.gpu.kernels import KernelLibrary  # noqa: E402
from server.engine.llm import LLM  # noqa: E402
from server.engine.ops.cuda import CudaOps  # noqa: E402
from server.engine.ops.cuda_prefetch import PREFETCH_ENV, prefetch_into_l2  # noqa: E402

# (name, rows, cols) of bf16 weights: GPT-2 XL's qkv, o, fc; Llama-3-8B's o and down
GEMV_SHAPES = (("gpt2-xl qkv", 4800, 1600), ("gpt2-xl o", 1600, 1600),
               ("gpt2-xl fc", 6400, 1600), ("llama-3-8b o", 4096, 4096),
               ("llama-3-8b down", 4096, 14336))
GAPS_US = (0, 4, 10, 30)
CHUNKS = (16 * 1024, 64 * 1024, 256 * 1024)
PREFETCH_CTAS = (1, 8, 32)
# MODEL[@QUANTIZATION]: W4A16's step spends 0.67 of its 2.81 ms outside the GEMVs too, and
# FP8's on an H200 0.48 of 2.89 (docs/benchmarks.md)
MODELS = ("dummy:gpt2-xl", "dummy:starcoder-1b", "dummy:llama-3-8b",
          "dummy:llama-3-8b@fp8", "dummy:llama-3-8b@int4_wo")
FLUSH_BYTES = 256 * 2**20  # five times an H100's L2


def spin_us(us: float) -> None:
    """A kernel that keeps one SM busy for about `us` microseconds (and HBM idle)."""
    if us > 0:
        torch.cuda._sleep(int(us * torch.cuda.get_device_properties(0).clock_rate / 1e3))


def gemv_us(ops: CudaOps, weight: torch.Tensor, *, gap_us: float, chunk: int | None,
            flush: torch.Tensor, max_ctas: int | None = None, repeats: int = 30) -> float:
    """Median µs of the GEMV alone, after a flush, [a prefetch], a spin of gap_us."""
    x = torch.randn(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    times = []
    for _ in range(repeats + 3):
        flush.zero_()
        if chunk is not None:
            prefetch_into_l2(ops.library, weight, chunk_bytes=chunk, max_ctas=max_ctas)
        spin_us(gap_us)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        ops.linear(x, weight)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times[3:])[repeats // 2]


def gemv_probe() -> list[dict]:
    ops = CudaOps(KernelLibrary(programmatic_launch=True), prefetch_weights=True)
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    rows = []
    for name, n, k in GEMV_SHAPES:
        weight = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        row = {"shape": name, "MB": weight.numel() * 2 / 1e6,
               "cold_us": gemv_us(ops, weight, gap_us=0, chunk=None, flush=flush)}
        for chunk in CHUNKS:
            for gap in GAPS_US:
                row[f"chunk{chunk // 1024}k_gap{gap}_us"] = gemv_us(
                    ops, weight, gap_us=gap, chunk=chunk, flush=flush)
        for ctas in PREFETCH_CTAS:  # can one SM issue it (from inside a one-CTA norm)?
            row[f"ctas{ctas}_gap10_us"] = gemv_us(ops, weight, gap_us=10, chunk=CHUNKS[1],
                                                  flush=flush, max_ctas=ctas)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def hop_probe(*, calls: int = 200) -> dict:
    """µs a prefetch kernel adds to a chain of small kernels under programmatic launch: a
    graph of `calls` one-row RMSNorms, each with a prefetch of 16 KB before it or not (the
    kernel after a prefetch waits for it, and it for the kernel before)."""
    ops = CudaOps(KernelLibrary(programmatic_launch=True), prefetch_weights=True)
    x = torch.randn(1, 4096, dtype=torch.bfloat16, device="cuda")
    norm = torch.ones(4096, dtype=torch.bfloat16, device="cuda")
    tiny = torch.empty(8192, dtype=torch.bfloat16, device="cuda")

    def chain(prefetch: bool):
        def run():
            for _ in range(calls):
                if prefetch:
                    prefetch_into_l2(ops.library, tiny)
                ops.rms_norm(x, norm, 1e-6)
        return run

    plain = median_replay_ms(chain(False)) * 1e3 / calls
    with_prefetch = median_replay_ms(chain(True)) * 1e3 / calls
    row = {"norm_us": plain, "norm_with_prefetch_us": with_prefetch,
           "hop_us": with_prefetch - plain}
    print(json.dumps(row), flush=True)
    return row


def decode_rows(models: list[str], output_len: int, rounds: int) -> list[dict]:
    bandwidth = copy_bandwidth("cuda") / 1e9
    rows = []
    for spec in models:
        model, _, quantization = spec.partition("@")
        for round_ in range(rounds):
            for prefetch in ("0", "1"):
                os.environ[PREFETCH_ENV] = prefetch
                llm = LLM(model, device="cuda", max_num_seqs=8,
                          quantization=quantization or None)
                assert llm.engine.runner.ops.prefetch_weights is (prefetch == "1")
                llm.engine.runner.capture_graphs()
                b1 = batch1_decode(llm, output_len)
                weight_bytes = weight_bytes_of(llm)
                row = {"model": spec, "round": round_, "prefetch": prefetch == "1",
                       "tokens_per_s": b1["output_tokens_per_s"],
                       "of_roofline": b1["output_tokens_per_s"] * weight_bytes
                       / (bandwidth * 1e9), "copy_GBps": bandwidth}
                rows.append(row)
                print(json.dumps(row), flush=True)
                del llm
                free_gpu_memory()
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=1, help="engines off then on, this often")
    p.add_argument("--skip-gemv", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = {"device": torch.cuda.get_device_name(0)}
    if not args.skip_gemv:
        result["hop"] = hop_probe()
        result["gemv"] = gemv_probe()
    result["decode"] = decode_rows([m for m in args.models.split(",") if m], args.output_len,
                                   args.rounds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
