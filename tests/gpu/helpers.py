"""Inputs and comparisons shared by the GPU tests. Inputs are always fresh random values
(never zeros), and outputs start as NaN so an element a kernel forgot to write shows."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.ops.torch_ref import to_cache_dtype

DTYPES = (torch.bfloat16, torch.float16)
DTYPE_IDS = ("bf16", "fp16")
MAX_RELATIVE_ERROR = 1e-2


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64 = out.to(torch.float64)
    ref64 = ref.to(torch.float64)
    return ((out64 - ref64).norm() / ref64.norm()).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, *, what: str,
                 max_error: float = MAX_RELATIVE_ERROR) -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    nan_count = int(torch.isnan(out).sum())
    assert nan_count == 0, f"{what}: {nan_count} of {out.numel()} elements are NaN (unwritten?)"
    error = relative_error(out, ref)
    assert error <= max_error, f"{what}: relative error {error:.3e} > {max_error:.0e}"


def poisoned(shape: tuple[int, ...], *, dtype: torch.dtype, device: str = "cuda") -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def random_tensor(shape: tuple[int, ...], *, dtype: torch.dtype, generator: torch.Generator,
                  scale: float = 1.0, device: str = "cuda") -> torch.Tensor:
    values = torch.randn(shape, generator=generator, dtype=torch.float32, device=device) * scale
    return values.to(dtype)


def cuda_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def paged_batch(*, query_lens: list[int], context_lens: list[int], block_size: int,
                num_kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int,
                spare_blocks: int = 5, kv_dtype: torch.dtype | None = None
                ) -> tuple[torch.Tensor, AttentionMetadata]:
    """A random KV cache (of kv_dtype, default dtype) holding every sequence's context + new
    keys in shuffled blocks, and the metadata of one packed step over it (block tables
    padded with 0).

    # sequence i: | context_lens[i] cached | query_lens[i] new |  = seq_lens[i] keys
    """
    seq_lens = [context + new for context, new in zip(context_lens, query_lens)]
    blocks_needed = [-(-seq_len // block_size) for seq_len in seq_lens]
    num_blocks = sum(blocks_needed) + spare_blocks
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
    tables: list[list[int]] = []
    cursor = 0
    for count in blocks_needed:
        tables.append(order[cursor:cursor + count].tolist())
        cursor += count
    width = max(blocks_needed)
    padded = [row + [0] * (width - len(row)) for row in tables]
    kv_cache = to_cache_dtype(
        random_tensor((2, num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype,
                      generator=cuda_generator(seed)), kv_dtype or dtype)
    slots = [tables[seq][pos // block_size] * block_size + pos % block_size
             for seq, (context, seq_len) in enumerate(zip(context_lens, seq_lens))
             for pos in range(context, seq_len)]
    metadata = AttentionMetadata(
        num_tokens=sum(query_lens),
        num_seqs=len(query_lens),
        query_start_loc=torch.tensor(list(itertools.accumulate(query_lens, initial=0)),
                                     dtype=torch.int32, device="cuda"),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device="cuda"),
        block_tables=torch.tensor(padded, dtype=torch.int32, device="cuda"),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device="cuda"),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_host=tuple(query_lens),
        seq_lens_host=tuple(seq_lens),
    )
    return kv_cache, metadata


def captured(run: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """`run` recorded in a CUDA graph, after one warm-up run on a side stream (which sizes
    the library's arrival counters outside the capture, where their zeroing would be
    recorded rather than run)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph


def with_new_lengths(metadata: AttentionMetadata, seq_lens: list[int]) -> AttentionMetadata:
    """New lengths for a captured decode step: written into its device seq_lens (and
    context_lens, one less), and the metadata a reference computes the same step from."""
    metadata.seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
    metadata.context_lens.copy_(torch.tensor([n - 1 for n in seq_lens], dtype=torch.int32))
    return dataclasses.replace(metadata, max_seq_len=max(seq_lens), seq_lens_host=tuple(seq_lens))
