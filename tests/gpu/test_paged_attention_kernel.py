"""Paged attention (csrc/paged_attention_d*.cu, which merge their own key partitions with
csrc/attention_merge.cuh) against TorchOps.attention on packed batches mixing prefill
chunks, prefix-cache hits and decodes; split launches must leave their arrival counters at
0, so the next launch, and the next replay of a captured graph, is right too. Cases that
run decodes run with both decode kernels: w1 (decode_key_split=1) and w1k2 (2 warps
splitting each K/V tile's keys, whose softmax states the kernel combines). Cases marked
KV_DTYPES run over a cache in the model's dtype and over an e4m3 one (--kv-cache-dtype fp8,
csrc/paged_attention_fp8_d*.cu), whose reference reads the same e4m3 values; cases marked
TRANSPOSED also run decode tiles of up to 8 rows on the transposed kernels (keys in the MMA's
M dimension, csrc/attention_transposed.cuh)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.gpu.kernels import ATTENTION_HEAD_DIMS
from server.engine.ops.cuda_attention import paged_attention_into, plan_for
from server.engine.ops.cuda_attention_workspace import COUNTERS, allocate_workspace
from server.engine.ops.torch_ref import to_cache_dtype
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, captured, cuda_generator,
                               paged_batch, poisoned, random_tensor, with_new_lengths)

FP8_CACHE_VS_16_BIT_MAX_ERROR = 5e-2
HEADS = {"mha": (16, 16), "gqa": (32, 8), "mqa": (16, 1)}
KEY_SPLITS = pytest.mark.parametrize("decode_key_split", (1, 2), ids=("w1", "w1k2"))
KV_DTYPES = pytest.mark.parametrize("kv_dtype", (None, torch.float8_e4m3fn),
                                    ids=("kv16", "kvfp8"))
# decode tiles of up to 8 rows on the usual kernels, or transposed (keys in the MMA's M)
TRANSPOSED = pytest.mark.parametrize("transposed", (False, True), ids=("rows-in-m", "keys-in-m"))
# (head_dim, heads, dtype): every combination at head_dim 64, 96 and 128; the sizes added
# since (80: an odd count of 16-dim chunks, 256: dynamic shared memory) in bf16 over the GQA
# and MQA groups, which reach what differs with the size without doubling the matrix.
FULL_MATRIX_HEAD_DIMS = (64, 96, 128)
HEAD_DIM_CASES = pytest.mark.parametrize(("head_dim", "heads", "dtype"), [
    pytest.param(head_dim, heads, dtype, id=f"{head_dim}-{heads}-{dtype_id}")
    for head_dim in ATTENTION_HEAD_DIMS for heads in HEADS
    for dtype, dtype_id in zip(DTYPES, DTYPE_IDS)
    if head_dim in FULL_MATRIX_HEAD_DIMS or (heads != "mha" and dtype is torch.bfloat16)])
# name: (query_lens, context_lens, block_size)
BATCHES = {
    # prefill chunks from scratch, a prefix hit with a multi-token query, decodes, block edges;
    # decodes of 1 to 16 keys leave w1k2's second warp (keys 16-31 of a tile) nothing to see
    "mixed": ([17, 1, 64, 1, 5, 33], [0, 100, 37, 1000, 16, 15], 16),
    "decode": ([1] * 9, [0, 1, 15, 16, 17, 255, 256, 257, 1999], 16),
    "prefix-hits": ([3, 48, 129], [32, 300, 1], 32),
    "long-decode": ([1, 1, 1], [8191, 8000, 123], 16),
    "long-chunk": ([96, 1], [8192, 4000], 16),
}


def make_inputs(*, batch: str, heads: str, head_dim: int, dtype: torch.dtype, seed: int,
                kv_dtype: torch.dtype | None = None):
    query_lens, context_lens, block_size = BATCHES[batch]
    num_heads, num_kv_heads = HEADS[heads]
    kv_cache, metadata = paged_batch(query_lens=query_lens, context_lens=context_lens,
                                     block_size=block_size, num_kv_heads=num_kv_heads,
                                     head_dim=head_dim, dtype=dtype, seed=seed,
                                     kv_dtype=kv_dtype)
    q = random_tensor((metadata.num_tokens, num_heads, head_dim), dtype=dtype,
                      generator=cuda_generator(seed + 1))
    return q, kv_cache, metadata


def nan_workspace(plan, q: torch.Tensor, kv_cache: torch.Tensor):
    num_tokens, num_heads, head_dim = q.shape
    workspace = allocate_workspace(plan, num_tokens=num_tokens, num_heads=num_heads,
                                   num_kv_heads=kv_cache.shape[3], head_dim=head_dim,
                                   device=q.device)
    if workspace is not None:
        for part in (workspace.part_acc, workspace.part_max, workspace.part_sum):
            part.fill_(float("nan"))  # the merge must read only partitions that were written
    return workspace


def assert_counters_at_zero(counters: torch.Tensor, *, what: str) -> None:
    left = int(torch.count_nonzero(counters))
    assert left == 0, f"{what}: {left} arrival counters were not returned to 0"


def run_case(library, torch_ops, *, batch: str, heads: str, head_dim: int, dtype: torch.dtype,
             seed: int, num_partitions: int | None = None, decode_key_split: int = 1,
             kv_dtype: torch.dtype | None = None, transposed: bool = False):
    q, kv_cache, metadata = make_inputs(batch=batch, heads=heads, head_dim=head_dim,
                                        dtype=dtype, seed=seed, kv_dtype=kv_dtype)
    return launch_and_compare(library, torch_ops, q, kv_cache, metadata,
                              scale=head_dim ** -0.5, what=f"attention {batch}/{heads}",
                              num_partitions=num_partitions,
                              decode_key_split=decode_key_split, transposed=transposed)


def launch_and_compare(library, torch_ops, q: torch.Tensor, kv_cache: torch.Tensor, metadata,
                       *, scale: float, what: str, num_partitions: int | None = None,
                       decode_key_split: int = 1, transposed: bool = False,
                       extras: dict | None = None):
    """The kernels on one batch (into a poisoned output, partitions in a NaN workspace)
    against TorchOps.attention with the same arguments; extras: softcap and alibi_slopes,
    which take the _extras builds. Returns the plan."""
    extras = extras or {}
    plan = plan_for(library, q, kv_cache, metadata, decode_key_split=decode_key_split,
                    transposed_decode=transposed, extras=bool(extras))
    assert all(launch.extras == bool(extras) for launch in plan.launches), plan
    if not extras:
        assert all(launch.key_split == decode_key_split
                   for launch in plan.launches if launch.warps == 1), plan
    if num_partitions is not None:
        plan = dataclasses.replace(plan, num_partitions=num_partitions)
    workspace = nan_workspace(plan, q, kv_cache)
    out = poisoned(tuple(q.shape), dtype=q.dtype)
    paged_attention_into(library, out, q, kv_cache, metadata, scale, workspace=workspace,
                         plan=plan, decode_key_split=decode_key_split, **extras)
    what = f"{what}/d{q.shape[2]}/{q.dtype}/cache {kv_cache.dtype} {plan}"
    assert_close(out, torch_ops.attention(q, kv_cache, metadata, scale, **extras), what=what)
    if workspace is not None:
        assert_counters_at_zero(workspace.counters, what=what)
    return plan


@TRANSPOSED
@KV_DTYPES
@KEY_SPLITS
@HEAD_DIM_CASES
@pytest.mark.parametrize("batch", tuple(BATCHES))
def test_paged_attention_matches_reference(library, torch_ops, batch, heads, head_dim, dtype,
                                           decode_key_split, kv_dtype, transposed):
    run_case(library, torch_ops, batch=batch, heads=heads, head_dim=head_dim, dtype=dtype,
             seed=len(batch) * 7 + head_dim, decode_key_split=decode_key_split,
             kv_dtype=kv_dtype, transposed=transposed)


@KEY_SPLITS
@pytest.mark.parametrize("batch", ("long-decode", "long-chunk"))
def test_long_contexts_are_split_across_partitions(library, torch_ops, batch, decode_key_split):
    plan = run_case(library, torch_ops, batch=batch, heads="gqa", head_dim=128,
                    dtype=torch.bfloat16, seed=5, decode_key_split=decode_key_split)
    assert plan.num_partitions > 1, plan


@TRANSPOSED
@KV_DTYPES
@KEY_SPLITS
@pytest.mark.parametrize("num_partitions", (1, 2, 7, 64))
@pytest.mark.parametrize("batch", ("mixed", "decode", "long-decode"))
def test_any_partition_count_gives_the_same_attention(library, torch_ops, batch,
                                                      num_partitions, decode_key_split,
                                                      kv_dtype, transposed):
    # A captured graph keeps the partition count of its capture whatever the lengths later.
    run_case(library, torch_ops, batch=batch, heads="gqa", head_dim=128, dtype=torch.float16,
             seed=num_partitions, num_partitions=num_partitions,
             decode_key_split=decode_key_split, kv_dtype=kv_dtype, transposed=transposed)


@TRANSPOSED
@KV_DTYPES
@KEY_SPLITS
@HEAD_DIM_CASES
@pytest.mark.parametrize("batch", ("mixed", "decode", "prefix-hits"))
def test_split_attention_merges_in_the_last_cta(library, torch_ops, batch, heads, head_dim,
                                                dtype, decode_key_split, kv_dtype, transposed):
    # 5 parts: short sequences leave parts empty (they still count in), the 1-, 2- and
    # 4-warp launches of a mixed batch share the counters, and group 16 (mqa) makes a decode
    # tile merge its rows in two batches (w1) or one per warp (w1k2).
    run_case(library, torch_ops, batch=batch, heads=heads, head_dim=head_dim, dtype=dtype,
             seed=len(batch) + head_dim, num_partitions=5, decode_key_split=decode_key_split,
             kv_dtype=kv_dtype, transposed=transposed)


@pytest.mark.parametrize("head_dim", ATTENTION_HEAD_DIMS)
def test_key_split_decode_matches_the_one_warp_kernel(library, head_dim):
    # Same inputs through w1 and w1k2: only the order of float sums and the max each P is
    # rounded against differ.
    q, kv_cache, metadata = make_inputs(batch="decode", heads="gqa", head_dim=head_dim,
                                        dtype=torch.bfloat16, seed=61)
    outs = []
    for decode_key_split in (1, 2):
        out = poisoned(tuple(q.shape), dtype=q.dtype)
        paged_attention_into(library, out, q, kv_cache, metadata, head_dim ** -0.5,
                             decode_key_split=decode_key_split)
        outs.append(out)
    assert_close(outs[1], outs[0], what=f"w1k2 against w1 at d{head_dim}")


@pytest.mark.parametrize("head_dim", ATTENTION_HEAD_DIMS)
def test_split_launches_in_a_row_reuse_one_workspace(library, torch_ops, head_dim):
    scale = head_dim ** -0.5
    q, kv_cache, metadata = make_inputs(batch="mixed", heads="gqa", head_dim=head_dim,
                                        dtype=torch.bfloat16, seed=31)
    plan = dataclasses.replace(plan_for(library, q, kv_cache, metadata), num_partitions=9)
    workspace = nan_workspace(plan, q, kv_cache)
    for seed in (31, 32, 33):  # same shapes, new keys, queries and block tables
        q, kv_cache, metadata = make_inputs(batch="mixed", heads="gqa", head_dim=head_dim,
                                            dtype=torch.bfloat16, seed=seed)
        out = poisoned(tuple(q.shape), dtype=q.dtype)
        paged_attention_into(library, out, q, kv_cache, metadata, scale, workspace=workspace,
                             plan=plan)
        assert_close(out, torch_ops.attention(q, kv_cache, metadata, scale),
                     what=f"launch with seed {seed} on a reused workspace")
        assert_counters_at_zero(workspace.counters, what=f"seed {seed}")


def test_split_launches_without_workspace_share_the_library_counters(library, torch_ops):
    # Launches of different batches (and grids) take turns on the same counters.
    for batch, seed in (("long-decode", 41), ("mixed", 42), ("long-decode", 43), ("mixed", 44)):
        q, kv_cache, metadata = make_inputs(batch=batch, heads="gqa", head_dim=128,
                                            dtype=torch.float16, seed=seed)
        plan = dataclasses.replace(plan_for(library, q, kv_cache, metadata), num_partitions=12)
        out = poisoned(tuple(q.shape), dtype=q.dtype)
        paged_attention_into(library, out, q, kv_cache, metadata, 0.1, plan=plan)
        assert_close(out, torch_ops.attention(q, kv_cache, metadata, 0.1),
                     what=f"{batch} on the library's counters")
        assert_counters_at_zero(library.zeroed_int32(COUNTERS, 0), what=batch)


@TRANSPOSED
@KV_DTYPES
@KEY_SPLITS
@pytest.mark.parametrize("own_workspace", (True, False), ids=("workspace", "library-counters"))
def test_captured_split_decode_replays_with_new_lengths(library, torch_ops, own_workspace,
                                                        decode_key_split, kv_dtype, transposed):
    # Every sequence has blocks for 4000 keys; the graph is planned (split) for that length.
    num_heads, num_kv_heads = HEADS["gqa"]
    kv_cache, metadata = paged_batch(query_lens=[1, 1, 1], context_lens=[3999] * 3,
                                     block_size=16, num_kv_heads=num_kv_heads, head_dim=128,
                                     dtype=torch.bfloat16, seed=51, kv_dtype=kv_dtype)
    q = random_tensor((3, num_heads, 128), dtype=torch.bfloat16, generator=cuda_generator(52))
    plan = plan_for(library, q, kv_cache, metadata, decode_key_split=decode_key_split,
                    transposed_decode=transposed)
    assert plan.num_partitions > 1 and plan.launches[0].transposed == transposed, plan
    workspace = nan_workspace(plan, q, kv_cache) if own_workspace else None
    out = torch.empty_like(q)
    scale = 128 ** -0.5

    def attend():
        paged_attention_into(library, out, q, kv_cache, metadata, scale, workspace=workspace,
                             plan=plan, decode_key_split=decode_key_split)

    graph = captured(attend)
    # Short sequences leave most of the captured partitions empty; replays run back to back.
    for seq_lens in ([4000, 2500, 700], [33, 1, 2100], [1, 4000, 64], [700, 2, 1]):
        now = with_new_lengths(metadata, seq_lens)
        out.fill_(float("nan"))
        graph.replay()
        assert_close(out, torch_ops.attention(q, kv_cache, now, scale),
                     what=f"replay with seq_lens {seq_lens}")
        counters = workspace.counters if own_workspace else library.zeroed_int32(COUNTERS, 0)
        assert_counters_at_zero(counters, what=f"replay with seq_lens {seq_lens}")


def test_cuda_ops_attention_matches_torch_ops(cuda_ops, torch_ops):
    kv_cache, metadata = paged_batch(query_lens=[12, 1, 1], context_lens=[20, 700, 3],
                                     block_size=16, num_kv_heads=4, head_dim=64,
                                     dtype=torch.bfloat16, seed=9)
    q = random_tensor((metadata.num_tokens, 16, 64), dtype=torch.bfloat16,
                      generator=cuda_generator(10))
    assert_close(cuda_ops.attention(q, kv_cache, metadata, 0.125),
                 torch_ops.attention(q, kv_cache, metadata, 0.125), what="CudaOps.attention")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_fp8_cache_attention_stays_close_to_the_16_bit_cache(library, dtype):
    # The same keys and values in both caches: e4m3 keeps 3 mantissa bits (up to 6 % per
    # value), which the weighted sums over hundreds of keys average down.
    q, kv16, metadata = make_inputs(batch="mixed", heads="gqa", head_dim=128, dtype=dtype,
                                    seed=71)
    kv8 = to_cache_dtype(kv16, torch.float8_e4m3fn)
    outs = []
    for kv_cache in (kv16, kv8):
        out = poisoned(tuple(q.shape), dtype=dtype)
        paged_attention_into(library, out, q, kv_cache, metadata, 128 ** -0.5)
        outs.append(out)
    assert_close(outs[1], outs[0], what="fp8 cache against the 16-bit cache",
                 max_error=FP8_CACHE_VS_16_BIT_MAX_ERROR)


def test_attention_refuses_a_cache_of_another_16_bit_dtype(library):
    q, kv_cache, metadata = make_inputs(batch="decode", heads="gqa", head_dim=64,
                                        dtype=torch.bfloat16, seed=3)
    out = torch.empty_like(q)
    with pytest.raises(KernelArgumentError, match="float8_e4m3fn"):
        paged_attention_into(library, out, q, kv_cache.half(), metadata, 0.125)
