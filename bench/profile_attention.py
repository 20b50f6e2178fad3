"""One decode and one prefill attention call inside a profiler range, for Nsight Compute:

    ncu --profile-from-start off --clock-control none --section SpeedOfLight \
        --section WarpStateStats python3 bench/profile_attention.py

Shapes: Llama-3-8B attention (32 query heads, 8 kv heads, head_dim 128, bf16); decode at
batch 64 with 2048-token contexts (--decode-batch, --context), over a bf16 cache and then an
e4m3 one (--kv-cache-dtype fp8's kernels), and a prefill of 4 x 1024 tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.kernels import (BLOCK_SIZE, DTYPE, HEAD_DIM, NUM_HEADS, NUM_KV_HEADS,  # noqa: E402
                           decode_metadata)
from server.engine.attention.metadata import AttentionMetadata  # noqa: E402
from server.engine.gpu.kernels import KernelLibrary  # noqa: E402
from server.engine.ops.cuda import CudaOps  # noqa: E402
from server.engine.ops.torch_ref import to_cache_dtype  # noqa: E402


def prefill_metadata(num_seqs: int, length: int) -> AttentionMetadata:
    tables = torch.arange(num_seqs * length // BLOCK_SIZE, dtype=torch.int32, device="cuda")
    return AttentionMetadata(
        num_tokens=num_seqs * length, num_seqs=num_seqs,
        query_start_loc=torch.arange(0, (num_seqs + 1) * length, length, dtype=torch.int32,
                                     device="cuda"),
        seq_lens=torch.full((num_seqs,), length, dtype=torch.int32, device="cuda"),
        context_lens=torch.zeros(num_seqs, dtype=torch.int32, device="cuda"),
        block_tables=tables.view(num_seqs, -1),
        slot_mapping=torch.zeros(num_seqs * length, dtype=torch.int64, device="cuda"),
        max_query_len=length, max_seq_len=length, query_lens_host=(length,) * num_seqs,
        seq_lens_host=(length,) * num_seqs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode-batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=2048)
    args = parser.parse_args()
    ops = CudaOps(KernelLibrary())
    ops.library.load_all(head_dims=(HEAD_DIM,))  # the one head_dim timed
    blocks = max(args.decode_batch * args.context, 4096) // BLOCK_SIZE
    kv_cache = torch.randn((2, blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), device="cuda",
                           dtype=DTYPE)
    kv_fp8 = to_cache_dtype(kv_cache, torch.float8_e4m3fn)
    decode = decode_metadata(args.decode_batch, args.context, 0)
    prefill = prefill_metadata(4, 1024)
    q_decode = torch.randn((args.decode_batch, NUM_HEADS, HEAD_DIM), device="cuda", dtype=DTYPE)
    q_prefill = torch.randn((4096, NUM_HEADS, HEAD_DIM), device="cuda", dtype=DTYPE)
    calls = [lambda: ops.attention(q_decode, kv_cache, decode, HEAD_DIM ** -0.5),
             lambda: ops.attention(q_decode, kv_fp8, decode, HEAD_DIM ** -0.5),
             lambda: ops.attention(q_prefill, kv_cache, prefill, HEAD_DIM ** -0.5)]
    for _ in range(2):  # warm-up outside the profiled range
        for call in calls:
            call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
