"""Sliding-window attention on our kernels against the whole context (not a test).

Decode and a prefill chunk at long contexts (Llama-3-8B's attention shape: 32 query heads,
8 kv heads, head_dim 128, bf16 cache), timed by graph replay: the plain kernels over the
whole context, the _extras kernels over it (a window as long as the context: what the extras
cost by themselves), and windows of 4,096 and 1,024 keys (Mistral v0.1's and Gemma 3's). A
window that only masks the keys before it costs what the whole context does; kernels that
skip them cost about window / context of it.

    python3 bench/window_attention.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not bench/

from server.engine.attention.metadata import AttentionMetadata  # noqa: E402
from server.engine.gpu.graph_capture import median_replay_ms  # noqa: E402
from server.engine.gpu.kernels import KernelLibrary  # noqa: E402
from server.engine.ops.cuda_attention import paged_attention_into  # noqa: E402

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
WINDOWS = (4096, 1024)
# name: (sequences, new tokens each, cached keys before them)
CASES = {"decode 64 x 16k": (64, 1, 16383), "decode 8 x 32k": (8, 1, 32767),
         "prefill 2k after 14k": (1, 2048, 14336)}


def batch(num_seqs: int, new: int, cached: int) -> tuple[torch.Tensor, torch.Tensor,
                                                         AttentionMetadata]:
    """q, a random bf16 cache and the metadata of one step: every sequence `cached` keys
    then `new` queries, in shuffled blocks."""
    seq_len = cached + new
    blocks_per_seq = -(-seq_len // BLOCK_SIZE)
    order = torch.randperm(num_seqs * blocks_per_seq)
    tables = order.view(num_seqs, blocks_per_seq).to(torch.int32).cuda()
    kv_cache = torch.randn((2, num_seqs * blocks_per_seq, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM),
                           device="cuda", dtype=DTYPE)
    q = torch.randn((num_seqs * new, NUM_HEADS, HEAD_DIM), device="cuda", dtype=DTYPE)
    metadata = AttentionMetadata(
        num_tokens=num_seqs * new, num_seqs=num_seqs,
        query_start_loc=torch.arange(0, (num_seqs + 1) * new, new, dtype=torch.int32,
                                     device="cuda"),
        seq_lens=torch.full((num_seqs,), seq_len, dtype=torch.int32, device="cuda"),
        context_lens=torch.full((num_seqs,), cached, dtype=torch.int32, device="cuda"),
        block_tables=tables,
        slot_mapping=torch.zeros(num_seqs * new, dtype=torch.int64, device="cuda"),
        max_query_len=new, max_seq_len=seq_len, query_lens_host=(new,) * num_seqs,
        seq_lens_host=(seq_len,) * num_seqs)
    return q, kv_cache, metadata


def bench_case(library: KernelLibrary, num_seqs: int, new: int, cached: int) -> dict:
    q, kv_cache, metadata = batch(num_seqs, new, cached)
    out = torch.empty_like(q)
    # label: window (None: the plain kernels; the context's length: the extras, nothing out)
    windows = {"whole": None, "whole, extras": cached + new,
               **{f"window {w}": w for w in WINDOWS}}
    row = {}
    for label, window in windows.items():
        ms = median_replay_ms(lambda window=window: paged_attention_into(
            library, out, q, kv_cache, metadata, HEAD_DIM ** -0.5, window=window))
        row[label] = ms * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    library = KernelLibrary()
    library.load_all(head_dims=(HEAD_DIM,))  # the one head_dim timed
    results = {"device": torch.cuda.get_device_name(),
               "cases": {name: bench_case(library, *shape) for name, shape in CASES.items()}}
    print(f"device {results['device']}; microseconds a call (of whole: the time over the "
          "plain kernels' whole context)")
    for name, row in results["cases"].items():
        whole = row["whole"]
        print(f"{name:>22}: " + ", ".join(f"{label} {us:.0f} us ({us / whole:.2f})"
                                         for label, us in row.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
