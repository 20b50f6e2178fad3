"""Paged attention (csrc/paged_attention.cu + attention_merge.cu) against TorchOps.attention
on packed batches mixing prefill chunks, prefix-cache hits and decodes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from server.engine.ops.cuda_attention import allocate_workspace, paged_attention_into, plan_for
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, cuda_generator, paged_batch,
                               poisoned, random_tensor)

HEADS = {"mha": (16, 16), "gqa": (32, 8), "mqa": (16, 1)}
# name: (query_lens, context_lens, block_size)
BATCHES = {
    # prefill chunks from scratch, a prefix hit with a multi-token query, decodes, block edges
    "mixed": ([17, 1, 64, 1, 5, 33], [0, 100, 37, 1000, 16, 15], 16),
    "decode": ([1] * 9, [0, 1, 15, 16, 17, 255, 256, 257, 1999], 16),
    "prefix-hits": ([3, 48, 129], [32, 300, 1], 32),
    "long-decode": ([1, 1, 1], [8191, 8000, 123], 16),
    "long-chunk": ([96, 1], [8192, 4000], 16),
}


def run_case(library, torch_ops, *, batch: str, heads: str, head_dim: int, dtype: torch.dtype,
             seed: int, num_partitions: int | None = None):
    query_lens, context_lens, block_size = BATCHES[batch]
    num_heads, num_kv_heads = HEADS[heads]
    kv_cache, metadata = paged_batch(query_lens=query_lens, context_lens=context_lens,
                                     block_size=block_size, num_kv_heads=num_kv_heads,
                                     head_dim=head_dim, dtype=dtype, seed=seed)
    q = random_tensor((metadata.num_tokens, num_heads, head_dim), dtype=dtype,
                      generator=cuda_generator(seed + 1))
    scale = head_dim ** -0.5
    plan = plan_for(library, q, kv_cache, metadata)
    if num_partitions is not None:
        plan = dataclasses.replace(plan, num_partitions=num_partitions)
    workspace = allocate_workspace(plan, num_tokens=metadata.num_tokens, num_heads=num_heads,
                                   head_dim=head_dim, device=q.device)
    if workspace is not None:
        for part in (workspace.part_acc, workspace.part_max, workspace.part_sum):
            part.fill_(float("nan"))  # the merge must read only partitions that were written
    out = poisoned(tuple(q.shape), dtype=dtype)
    paged_attention_into(library, out, q, kv_cache, metadata, scale, workspace=workspace,
                         plan=plan)
    ref = torch_ops.attention(q, kv_cache, metadata, scale)
    assert_close(out, ref, what=f"attention {batch}/{heads}/d{head_dim}/{dtype} {plan}")
    return plan


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("head_dim", (64, 128))
@pytest.mark.parametrize("heads", tuple(HEADS))
@pytest.mark.parametrize("batch", tuple(BATCHES))
def test_paged_attention_matches_reference(library, torch_ops, batch, heads, head_dim, dtype):
    run_case(library, torch_ops, batch=batch, heads=heads, head_dim=head_dim, dtype=dtype,
             seed=len(batch) * 7 + head_dim)


@pytest.mark.parametrize("batch", ("long-decode", "long-chunk"))
def test_long_contexts_are_split_across_partitions(library, torch_ops, batch):
    plan = run_case(library, torch_ops, batch=batch, heads="gqa", head_dim=128,
                    dtype=torch.bfloat16, seed=5)
    assert plan.num_partitions > 1, plan


@pytest.mark.parametrize("num_partitions", (1, 2, 7, 64))
@pytest.mark.parametrize("batch", ("mixed", "decode", "long-decode"))
def test_any_partition_count_gives_the_same_attention(library, torch_ops, batch,
                                                      num_partitions):
    # A captured graph keeps the partition count of its capture whatever the lengths later.
    run_case(library, torch_ops, batch=batch, heads="gqa", head_dim=128, dtype=torch.float16,
             seed=num_partitions, num_partitions=num_partitions)


def test_cuda_ops_attention_matches_torch_ops(cuda_ops, torch_ops):
    kv_cache, metadata = paged_batch(query_lens=[12, 1, 1], context_lens=[20, 700, 3],
                                     block_size=16, num_kv_heads=4, head_dim=64,
                                     dtype=torch.bfloat16, seed=9)
    q = random_tensor((metadata.num_tokens, 16, 64), dtype=torch.bfloat16,
                      generator=cuda_generator(10))
    assert_close(cuda_ops.attention(q, kv_cache, metadata, 0.125),
                 torch_ops.attention(q, kv_cache, metadata, 0.125), what="CudaOps.attention")
