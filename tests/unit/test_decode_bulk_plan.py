"""Which steps the bulk-copy decode kernel takes and how it cuts keys into parts
(ops/cuda_decode_bulk.py; the kernel itself: tests/gpu/test_decode_bulk.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from server.engine.attention.metadata import AttentionMetadata
from server.engine.ops.cuda_decode_bulk import (MAX_PARTITIONS, bulk_partitions,
                                                decode_bulk_fits, num_stages, smem_bytes)


def decode_metadata(*, num_seqs: int, seq_len: int) -> AttentionMetadata:
    ints = dict(dtype=torch.int32)
    return AttentionMetadata(
        num_tokens=num_seqs, num_seqs=num_seqs,
        query_start_loc=torch.arange(num_seqs + 1, **ints),
        seq_lens=torch.full((num_seqs,), seq_len, **ints),
        context_lens=torch.full((num_seqs,), seq_len - 1, **ints),
        block_tables=torch.zeros((num_seqs, 4), **ints),
        slot_mapping=torch.zeros(num_seqs, dtype=torch.int64), max_query_len=1,
        max_seq_len=seq_len, query_lens_host=(1,) * num_seqs, seq_lens_host=(seq_len,) * num_seqs)


def step(*, num_heads: int = 32, kv_heads: int = 8, head_dim: int = 128, block_size: int = 16,
         kv_dtype: torch.dtype = torch.bfloat16):
    q = torch.empty((4, num_heads, head_dim), dtype=torch.bfloat16)
    kv_cache = torch.empty((2, 8, block_size, kv_heads, head_dim), dtype=kv_dtype)
    return q, kv_cache, decode_metadata(num_seqs=4, seq_len=50)


@pytest.mark.parametrize("kv_dtype", (torch.bfloat16, torch.float8_e4m3fn))
def test_llama_3_decode_steps_fit_on_hopper_only(kv_dtype):
    q, kv_cache, metadata = step(kv_dtype=kv_dtype)
    assert decode_bulk_fits("sm_90", q=q, kv_cache=kv_cache, metadata=metadata, extras=False)
    assert not decode_bulk_fits("sm_89", q=q, kv_cache=kv_cache, metadata=metadata,
                                extras=False)
    assert not decode_bulk_fits("sm_90", q=q, kv_cache=kv_cache, metadata=metadata,
                                extras=True)


@pytest.mark.parametrize("shape", [dict(kv_heads=4, num_heads=32), dict(head_dim=64),
                                   dict(num_heads=72), dict(block_size=8)],
                         ids=("four-kv-heads", "head-dim-64", "group-of-9", "blocks-of-8"))
def test_other_shapes_are_left_to_the_other_kernels(shape):
    q, kv_cache, metadata = step(**shape)
    assert not decode_bulk_fits("sm_90", q=q, kv_cache=kv_cache, metadata=metadata,
                                extras=False)


def test_a_step_with_a_prefill_chunk_is_not_a_decode_step():
    q, kv_cache, metadata = step()
    chunk = dataclasses.replace(metadata, num_tokens=5, max_query_len=2,
                                query_lens_host=(2, 1, 1, 1))
    assert not decode_bulk_fits("sm_90", q=q, kv_cache=kv_cache, metadata=chunk, extras=False)


def test_parts_fill_the_last_wave_and_stay_long_enough():
    assert bulk_partitions(num_seqs=256, max_seq_len=640, num_sms=132) == 1
    assert bulk_partitions(num_seqs=64, max_seq_len=640, num_sms=132) == 2  # 128 of 132 SMs
    # a short context is not cut below MIN_PART_TILES tiles a part
    assert bulk_partitions(num_seqs=1, max_seq_len=100, num_sms=132) == 1
    assert bulk_partitions(num_seqs=1, max_seq_len=1 << 20, num_sms=132) == MAX_PARTITIONS


def test_the_ring_fits_a_hopper_sm():
    assert (num_stages(True), num_stages(False)) == (6, 3)
    assert max(smem_bytes(True), smem_bytes(False)) <= 227 * 1024
