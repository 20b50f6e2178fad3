"""KV pool sizing (pure arithmetic) and the layout of the allocated tensor."""

from __future__ import annotations

import pytest
import torch

from server.kvcache.kv_pool import KVCacheSizeError, KVPool, bytes_per_block, num_blocks_for

SHAPE = dict(num_layers=3, num_kv_heads=2, head_dim=8)


def test_bytes_per_block_counts_k_and_v_of_every_layer():
    assert bytes_per_block(**SHAPE, block_size=16, dtype=torch.bfloat16) == 3 * 2 * 16 * 2 * 8 * 2
    assert bytes_per_block(**SHAPE, block_size=4, dtype=torch.float32) == 3 * 2 * 4 * 2 * 8 * 4


def test_num_blocks_wins_over_tokens_and_fraction():
    assert num_blocks_for(block_size=16, bytes_per_block=1024, num_blocks=7,
                          kv_cache_tokens=4096, memory_fraction=0.5, free_bytes=10**9) == 7


def test_token_budget_rounds_down_to_whole_blocks():
    assert num_blocks_for(block_size=16, bytes_per_block=1024, kv_cache_tokens=100) == 6


def test_memory_fraction_takes_that_share_of_free_bytes():
    assert num_blocks_for(block_size=16, bytes_per_block=1000, memory_fraction=0.5,
                          free_bytes=10_999) == 5


def test_fraction_too_small_for_one_block_is_an_actionable_error():
    with pytest.raises(KVCacheSizeError, match="memory-fraction"):
        num_blocks_for(block_size=16, bytes_per_block=10**6, memory_fraction=0.1,
                       free_bytes=10**6)


def test_no_size_at_all_is_an_error():
    with pytest.raises(KVCacheSizeError):
        num_blocks_for(block_size=16, bytes_per_block=1024)


def test_pool_tensor_has_one_view_per_layer_in_the_ops_layout():
    pool = KVPool(**SHAPE, num_blocks=5, block_size=4, dtype=torch.float32, device="cpu")
    assert pool.kv_cache.shape == (3, 2, 5, 4, 2, 8)
    assert pool.layer(1).shape == (2, 5, 4, 2, 8) and pool.layer(1).is_contiguous()
    assert pool.num_tokens == 20
    assert pool.bytes_per_token * pool.num_tokens == pool.num_bytes
    assert pool.num_bytes == pool.kv_cache.numel() * 4


def test_sized_pool_on_cpu_follows_the_token_budget():
    pool = KVPool.sized(**SHAPE, block_size=8, dtype=torch.float32, device="cpu",
                        kv_cache_tokens=50)
    assert pool.num_blocks == 6


def test_sized_pool_refuses_more_than_the_free_memory():
    with pytest.raises(KVCacheSizeError, match="free"):
        KVPool.sized(**SHAPE, block_size=8, dtype=torch.float32, device="cpu",
                     num_blocks=10**12)
