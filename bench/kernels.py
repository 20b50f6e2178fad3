"""Kernel micro-benchmark on one GPU (not a test): our attention, norm, activation and rotary
kernels for a Llama-3-8B layer shape (32 query heads, 8 kv heads, head_dim 128, bf16).

Decode attention is timed at batch 1/64/256/512 with contexts 512/640/2048/8192, on both
decode kernels (decode_key_split 1: w1, one warp per tile; 2: w1k2, two warps splitting each
K/V tile's keys) over the same cache, once over a bf16 cache and once over an e4m3 one
(--kv-cache-dtype fp8, half the bytes), and reported as achieved KV bandwidth (K and V bytes
read once) against a measured device copy bandwidth (read + write) and read bandwidth (a
bf16 sum), with w1k2's speed-up over w1 and the e4m3 cache's over bf16;
prefill attention for 4 sequences of 1024 new tokens as time and TFLOP/s (both caches; on an
sm_90 GPU each on the Hopper wgmma kernel and on the mma.sync kernels alone),
next to torch's own fused attention on the same shape. --batches, --contexts and
--prefill-lengths widen the grid (issue 16's: batches 64,256,512,1024, contexts 640,2048,8192,
prefill lengths 1024,4096,16384; a prefill of L tokens runs max(1, 4096 // L) sequences). Every timing replays a CUDA graph and takes the
median of CUDA-event timings; small cases put several launches over distinct KV regions in
one graph, so that repeated reads come from HBM rather than the 50 MB L2. The elementwise
kernels (norms, SiLU-and-mul, rotary) run 20 times per graph on 256 tokens, whose few MB
stay in L2 as the activations of a real step would.

    python3 bench/kernels.py [--json out.json] [--batches 1,64,256,512]
        [--contexts 512,640,2048,8192] [--prefill-lengths 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from server.engine.attention.metadata import AttentionMetadata  # noqa: E402
from server.engine.gpu.graph_capture import median_replay_ms  # noqa: E402
from server.engine.gpu.kernels import KernelLibrary  # noqa: E402
from server.engine.ops.cuda import CudaOps  # noqa: E402
from server.engine.ops.cuda_attention import (DECODE_KEY_SPLITS,  # noqa: E402
                                              paged_attention_into, plan_for)
from server.engine.ops.cuda_attention_hopper import HOPPER_ATTENTION_ENV  # noqa: E402
from server.engine.ops.cuda_decode_bulk import (bulk_partitions, decode_bulk_fits,  # noqa: E402
                                                decode_bulk_into)
from server.engine.ops.torch_ref import to_cache_dtype  # noqa: E402
from server.kvcache.kv_pool import FP8_KV_DTYPE  # noqa: E402

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
KV_DTYPES = {"bf16": DTYPE, "fp8": FP8_KV_DTYPE}
L2_FLUSH_BYTES = 256 * 2**20  # each timed graph touches at least this much distinct data


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB, bytes read plus written per second."""
    src = torch.randn(2**29, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(100):  # let the clocks rise before anything is timed
        dst.copy_(src)
    ms = median_replay_ms(lambda: dst.copy_(src), calls=5)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def read_bandwidth() -> float:
    """A sum over 2 GiB of bf16: bytes read per second, the ceiling for decode attention,
    which reads the KV cache and writes almost nothing."""
    src = torch.randn(2**30, device="cuda", dtype=DTYPE)
    total = torch.empty((), device="cuda", dtype=torch.float32)
    ms = median_replay_ms(lambda: torch.sum(src, dim=0, dtype=torch.float32, out=total), calls=5)
    return src.numel() * src.element_size() / (ms * 1e-3)


def decode_metadata(batch: int, context: int, first_block: int) -> AttentionMetadata:
    blocks_per_seq = -(-context // BLOCK_SIZE)
    order = torch.randperm(batch * blocks_per_seq) + first_block
    tables = order.view(batch, blocks_per_seq).to(torch.int32).cuda()
    return AttentionMetadata(
        num_tokens=batch, num_seqs=batch,
        query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device="cuda"),
        seq_lens=torch.full((batch,), context, dtype=torch.int32, device="cuda"),
        context_lens=torch.full((batch,), context - 1, dtype=torch.int32, device="cuda"),
        block_tables=tables, slot_mapping=torch.zeros(batch, dtype=torch.int64, device="cuda"),
        max_query_len=1, max_seq_len=context, query_lens_host=(1,) * batch,
        seq_lens_host=(context,) * batch)


def random_cache(blocks: int, kv: str) -> torch.Tensor:
    """Filled a slice of blocks at a time: one randn of a 34 GB cache (batch 1,024 at 8k)
    and its cast would need twice that again."""
    cache = torch.empty((2, blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), device="cuda",
                        dtype=KV_DTYPES[kv])
    for start in range(0, blocks, 4096):
        part = cache[:, start:start + 4096]
        part.copy_(to_cache_dtype(torch.randn(part.shape, device="cuda", dtype=DTYPE),
                                  KV_DTYPES[kv]))
    return cache


def bench_decode(ops: CudaOps, batch: int, context: int, copy_bw: float,
                 kv: str) -> list[dict]:
    """One row per decode_key_split, timed over the same cache and block tables."""
    kv_bytes = batch * context * NUM_KV_HEADS * HEAD_DIM * 2 * KV_DTYPES[kv].itemsize
    copies = max(1, min(128, -(-L2_FLUSH_BYTES // kv_bytes)))
    free_bytes, _ = torch.cuda.mem_get_info()
    if copies * kv_bytes > 0.9 * free_bytes:  # e.g. batch 1,024 at 8k in bf16 on 80 GB
        print(f"decode {kv} {batch} x {context}: skipped, its cache needs "
              f"{copies * kv_bytes / 2**30:.1f} GiB of {free_bytes / 2**30:.1f} free")
        return []
    blocks = copies * batch * -(-context // BLOCK_SIZE)
    kv_cache = random_cache(blocks, kv)
    blocks_per_copy = blocks // copies
    metas = [decode_metadata(batch, context, i * blocks_per_copy) for i in range(copies)]
    q = torch.randn((batch, NUM_HEADS, HEAD_DIM), device="cuda", dtype=DTYPE)
    out = torch.empty_like(q)
    rows = []
    for transposed, key_split in [(t, k) for t in (False, True) for k in DECODE_KEY_SPLITS]:
        def step(key_split=key_split, transposed=transposed):
            for metadata in metas:
                paged_attention_into(ops.library, out, q, kv_cache, metadata, HEAD_DIM ** -0.5,
                                     decode_key_split=key_split, transposed_decode=transposed)

        ms = median_replay_ms(step) / copies
        plan = plan_for(ops.library, q, kv_cache, metas[0], decode_key_split=key_split,
                        transposed_decode=transposed)
        achieved = kv_bytes / (ms * 1e-3)
        unsplit_us = rows[0]["us"] if rows else ms * 1e3  # the w1 row comes first
        rows.append({"kv": kv, "batch": batch, "context": context, "key_split": key_split,
                     "kernel": plan.launches[0].kernel(suffix="", head_dim=HEAD_DIM)
                     .rsplit("_", 1)[-1],
                     "partitions": plan.num_partitions, "us": ms * 1e3,
                     "kv_mb": kv_bytes / 2**20, "gb_s": achieved / 1e9,
                     "of_copy": achieved / copy_bw, "speedup": unsplit_us / (ms * 1e3)})
    if decode_bulk_fits(ops.library.arch, q=q, kv_cache=kv_cache, metadata=metas[0],
                        extras=False):  # the bulk-copy kernel (csrc/paged_decode_bulk.cu)
        def bulk_step():
            for metadata in metas:
                decode_bulk_into(ops.library, out, q, kv_cache, metadata, HEAD_DIM ** -0.5)

        ms = median_replay_ms(bulk_step) / copies
        achieved = kv_bytes / (ms * 1e-3)
        rows.append({"kv": kv, "batch": batch, "context": context, "key_split": 1,
                     "kernel": "bulk", "us": ms * 1e3,
                     "partitions": bulk_partitions(num_seqs=batch, max_seq_len=context,
                                                   num_sms=ops.library.num_sms),
                     "kv_mb": kv_bytes / 2**20, "gb_s": achieved / 1e9,
                     "of_copy": achieved / copy_bw, "speedup": rows[0]["us"] / (ms * 1e3)})
    return rows


@contextlib.contextmanager
def hopper_attention_off():
    previous = os.environ.get(HOPPER_ATTENTION_ENV)
    os.environ[HOPPER_ATTENTION_ENV] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[HOPPER_ATTENTION_ENV]
        else:
            os.environ[HOPPER_ATTENTION_ENV] = previous


def bench_prefill(ops: CudaOps, num_seqs: int = 4, length: int = 1024) -> dict:
    blocks = num_seqs * length // BLOCK_SIZE
    kv_cache = random_cache(blocks, "bf16")
    tables = torch.arange(blocks, dtype=torch.int32, device="cuda").view(num_seqs, -1)
    metadata = AttentionMetadata(
        num_tokens=num_seqs * length, num_seqs=num_seqs,
        query_start_loc=torch.arange(0, (num_seqs + 1) * length, length, dtype=torch.int32,
                                     device="cuda"),
        seq_lens=torch.full((num_seqs,), length, dtype=torch.int32, device="cuda"),
        context_lens=torch.zeros(num_seqs, dtype=torch.int32, device="cuda"), block_tables=tables,
        slot_mapping=torch.zeros(num_seqs * length, dtype=torch.int64, device="cuda"),
        max_query_len=length, max_seq_len=length, query_lens_host=(length,) * num_seqs,
        seq_lens_host=(length,) * num_seqs)
    q = torch.randn((num_seqs * length, NUM_HEADS, HEAD_DIM), device="cuda", dtype=DTYPE)
    ms = median_replay_ms(lambda: ops.attention(q, kv_cache, metadata, HEAD_DIM ** -0.5))
    hopper = any(launch.hopper for launch in plan_for(ops.library, q, kv_cache,
                                                      metadata).launches)
    with hopper_attention_off():  # the mma.sync kernels alone, for the comparison
        mma_ms = median_replay_ms(lambda: ops.attention(q, kv_cache, metadata,
                                                        HEAD_DIM ** -0.5))
    kv8 = to_cache_dtype(kv_cache, FP8_KV_DTYPE)
    fp8_ms = median_replay_ms(lambda: ops.attention(q, kv8, metadata, HEAD_DIM ** -0.5))
    with hopper_attention_off():
        fp8_mma_ms = median_replay_ms(lambda: ops.attention(q, kv8, metadata, HEAD_DIM ** -0.5))
    flops = 4 * num_seqs * NUM_HEADS * HEAD_DIM * length * (length + 1) / 2
    # torch's fused causal attention on contiguous (unpaged) tensors of the same shape, the
    # kv heads repeated for their query heads (same FLOPs)
    qt = q.view(num_seqs, length, NUM_HEADS, HEAD_DIM).transpose(1, 2).contiguous()
    kt = torch.randn((num_seqs, NUM_HEADS, length, HEAD_DIM), device="cuda", dtype=DTYPE)
    vt = torch.randn_like(kt)
    sdpa_ms = median_replay_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
    return {"seqs": num_seqs, "length": length, "us": ms * 1e3, "tflops": flops / ms / 1e9,
            "hopper": hopper, "mma_sync_us": mma_ms * 1e3,
            "mma_sync_tflops": flops / mma_ms / 1e9,
            "fp8_kv_us": fp8_ms * 1e3, "fp8_kv_mma_sync_us": fp8_mma_ms * 1e3,
            "sdpa_us": sdpa_ms * 1e3, "sdpa_tflops": flops / sdpa_ms / 1e9}


def bench_elementwise(ops: CudaOps, tokens: int = 256) -> list[dict]:
    hidden, inter = 4096, 14336
    x = torch.randn((tokens, hidden), device="cuda", dtype=DTYPE)
    residual, weight = torch.randn_like(x), torch.randn(hidden, device="cuda", dtype=DTYPE)
    gate_up = torch.randn((tokens, 2 * inter), device="cuda", dtype=DTYPE)
    qkv = torch.randn((tokens, (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM), device="cuda",
                      dtype=DTYPE)
    q, k, v = (t.view(tokens, -1, HEAD_DIM) for t in qkv.split(
        (NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM), dim=-1))
    cos_sin = torch.randn((8192, HEAD_DIM), device="cuda", dtype=DTYPE)
    kv_cache = torch.randn((2, 1024, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), device="cuda",
                           dtype=DTYPE)
    positions = torch.randint(0, 8192, (tokens,), device="cuda")
    slots = torch.randperm(1024 * BLOCK_SIZE, device="cuda")[:tokens]
    size = x.numel() * x.element_size()
    cases = {
        "rms_norm": (lambda: ops.rms_norm(x, weight, 1e-5), 2 * size),
        "add_rms_norm": (lambda: ops.add_rms_norm(x, residual, weight, 1e-5), 4 * size),
        "silu_and_mul": (lambda: ops.silu_and_mul(gate_up),
                         gate_up.numel() * 2 * 3 // 2),
        "rope_and_cache": (lambda: ops.rope_and_cache(q, k, v, positions, cos_sin, kv_cache,
                                                      slots),
                           # reads q, k, v; writes q, k, and k, v to the cache
                           (qkv.numel() + (NUM_HEADS + 3 * NUM_KV_HEADS) * HEAD_DIM * tokens) * 2),
    }
    rows = []
    for name, (fn, moved) in cases.items():
        ms = median_replay_ms(fn, calls=20)
        rows.append({"kernel": name, "tokens": tokens, "us": ms * 1e3,
                     "gb_s": moved / (ms * 1e-3) / 1e9})
    return rows


def print_table(results: dict) -> None:
    print(f"device {results['device']}; copy bandwidth {results['copy_gb_s']:.0f} GB/s "
          f"(read+write), read bandwidth {results['read_gb_s']:.0f} GB/s (bf16 sum)")
    print("decode attention (bf16 queries, 32/8 heads, d128, graph replay; kv: the cache's "
          "dtype; kernel: w1, w1k2 (key split), w1t, w1tk2 (transposed tiles), bulk (bulk "
          "copies, csrc/paged_decode_bulk.cu); speed-up: over "
          "w1; fp8/bf16: time of the bf16 "
          "cache over the fp8 one)")
    print(f"{'kv':>4} {'batch':>6} {'context':>8} {'kernel':>6} {'parts':>6} {'us':>9} "
          f"{'KV MB':>8} {'GB/s':>7} {'of copy':>8} {'of read':>8} {'speed-up':>9} "
          f"{'fp8/bf16':>9}")
    bf16_us = {(r["batch"], r["context"], r["kernel"]): r["us"]
               for r in results["decode"] if r["kv"] == "bf16"}
    for row in results["decode"]:
        versus = bf16_us[row["batch"], row["context"], row["kernel"]] / row["us"]
        print(f"{row['kv']:>4} {row['batch']:>6} {row['context']:>8} {row['kernel']:>6} "
              f"{row['partitions']:>6} {row['us']:>9.1f} {row['kv_mb']:>8.1f} "
              f"{row['gb_s']:>7.0f} {row['of_copy']:>8.0%} "
              f"{row['gb_s'] / results['read_gb_s']:>8.0%} {row['speedup']:>8.2f}x "
              f"{versus:>8.2f}x")
    for p in results["prefill"]:
        kernel = "Hopper wgmma kernel" if p["hopper"] else "mma.sync kernels"
        print(f"prefill attention {p['seqs']}x{p['length']} ({kernel}): {p['us']:.0f} us, "
              f"{p['tflops']:.0f} TFLOP/s; the mma.sync kernels alone {p['mma_sync_us']:.0f} us, "
              f"{p['mma_sync_tflops']:.0f} TFLOP/s; over an fp8 cache {p['fp8_kv_us']:.0f} us "
              f"(mma.sync alone {p['fp8_kv_mma_sync_us']:.0f} us) "
              f"(torch SDPA on unpaged tensors: {p['sdpa_us']:.0f} us, "
              f"{p['sdpa_tflops']:.0f} TFLOP/s)")
    for row in results["elementwise"]:
        print(f"{row['kernel']:>15} {row['tokens']} tokens: {row['us']:.1f} us, "
              f"{row['gb_s']:.0f} GB/s")


def progress(rows: list[dict]) -> list[dict]:
    """Each decode shape's rows as they are timed (a run cut short still shows them)."""
    for row in rows:
        print(f"  {row['kv']} {row['batch']} x {row['context']} {row['kernel']}: "
              f"{row['us']:.1f} us, {row['gb_s']:.0f} GB/s", flush=True)
    return rows


def int_list(text: str) -> tuple[int, ...]:
    """"64,256,512" -> (64, 256, 512)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--batches", type=int_list, default=(1, 64, 256, 512),
                        help="decode batch sizes, comma-separated (default 1,64,256,512)")
    parser.add_argument("--contexts", type=int_list, default=(512, 640, 2048, 8192),
                        help="decode context lengths (default 512,640,2048,8192)")
    parser.add_argument("--prefill-lengths", type=int_list, default=(1024,),
                        help="prefill lengths, multiples of 16 (default 1024)")
    parser.add_argument("--decode-only", action="store_true",
                        help="time decode attention alone (no prefill or elementwise rows)")
    args = parser.parse_args()
    ops = CudaOps(KernelLibrary())
    ops.library.load_all(head_dims=(HEAD_DIM,))  # the one head_dim timed
    copy_bw = copy_bandwidth()
    results = {"device": torch.cuda.get_device_name(), "copy_gb_s": copy_bw / 1e9,
               "read_gb_s": read_bandwidth() / 1e9,
               "decode": [row for kv in KV_DTYPES for b in args.batches
                          for c in args.contexts
                          for row in progress(bench_decode(ops, b, c, copy_bw, kv))],
               "prefill": [] if args.decode_only else [
                   bench_prefill(ops, num_seqs=max(1, 4096 // length), length=length)
                   for length in args.prefill_lengths],
               "elementwise": [] if args.decode_only else bench_elementwise(ops)}
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
