"""rope_and_cache against TorchOps: rotated q and k, and the K/V rows it writes to the cache
(and only those: every other slot must keep its poison), in the model's dtype or in e4m3."""

from __future__ import annotations

import pytest
import torch

from server.engine.ops.cuda_launch import rope_and_cache_into
from server.engine.ops.torch_ref import to_cache_dtype
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, cuda_generator, poisoned,
                               random_tensor)

MAX_POSITIONS = 9000


def cos_sin_table(head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.arange(MAX_POSITIONS, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype=dtype, device="cuda")


def fused_qkv(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
              dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """q, k, v as the model makes them: row views into one [T, (H + 2 Hkv) * D] projection."""
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = random_tensor((num_tokens, q_size + 2 * kv_size), dtype=dtype,
                        generator=cuda_generator(seed))
    q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
    return (q.reshape(num_tokens, num_heads, head_dim),
            k.reshape(num_tokens, num_kv_heads, head_dim),
            v.reshape(num_tokens, num_kv_heads, head_dim))


def token_slots(*, num_tokens: int, num_slots: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random positions (within the cos/sin table) and distinct random cache slots."""
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, MAX_POSITIONS, (num_tokens,), generator=gen).cuda()
    return positions, torch.randperm(num_slots, generator=gen)[:num_tokens].cuda()


def run_both(library, torch_ops, *, q, k, v, positions, cos_sin, kv_cache, slot_mapping):
    """The kernel into kv_cache and fresh poisoned outputs, the reference into a copy of
    kv_cache: ((q_out, k_out), (ref_q, ref_k), ref_cache)."""
    ref_cache = kv_cache.clone()
    q_out = poisoned(tuple(q.shape), dtype=q.dtype)
    k_out = poisoned(tuple(k.shape), dtype=k.dtype)
    rope_and_cache_into(library, q_out, k_out, q, k, v, positions, cos_sin, kv_cache,
                        slot_mapping)
    ref = torch_ops.rope_and_cache(q, k, v, positions, cos_sin, ref_cache, slot_mapping)
    assert_close(q_out, ref[0], what="rotated q")
    assert_close(k_out, ref[1], what="rotated k")
    return (q_out, k_out), ref, ref_cache


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cos_dtype", ("model", "float32"))
@pytest.mark.parametrize("heads", ((32, 8, 128), (16, 16, 64), (8, 1, 128)),
                         ids=("gqa-d128", "mha-d64", "mqa-d128"))
def test_rope_and_cache_matches_reference(library, torch_ops, dtype, cos_dtype, heads):
    num_heads, num_kv_heads, head_dim = heads
    num_tokens, num_blocks, block_size = 77, 40, 16
    q, k, v = fused_qkv(num_tokens, num_heads, num_kv_heads, head_dim, dtype=dtype, seed=3)
    cos_sin = cos_sin_table(head_dim, dtype if cos_dtype == "model" else torch.float32)
    positions, slot_mapping = token_slots(num_tokens=num_tokens,
                                          num_slots=num_blocks * block_size,
                                          seed=num_heads + head_dim)
    kv_cache = poisoned((2, num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype)
    _, _, ref_cache = run_both(library, torch_ops, q=q, k=k, v=v, positions=positions,
                               cos_sin=cos_sin, kv_cache=kv_cache, slot_mapping=slot_mapping)
    written = kv_cache.view(2, -1, num_kv_heads, head_dim)[:, slot_mapping]
    ref_written = ref_cache.view(2, -1, num_kv_heads, head_dim)[:, slot_mapping]
    assert_close(written[0], ref_written[0], what="cached k")
    assert_close(written[1], ref_written[1], what="cached v", max_error=0.0)
    assert torch.equal(torch.isnan(kv_cache), torch.isnan(ref_cache)), "wrote outside slot_mapping"


def test_cuda_ops_rope_and_cache_leaves_inputs_unchanged(cuda_ops, torch_ops):
    q, k, v = fused_qkv(9, 8, 2, 64, dtype=torch.bfloat16, seed=5)
    before = [t.clone() for t in (q, k, v)]
    cos_sin = cos_sin_table(64, torch.bfloat16)
    positions = torch.arange(100, 109, device="cuda")
    slot_mapping = torch.arange(3, 12, device="cuda")
    kv_cache = torch.zeros((2, 4, 16, 2, 64), dtype=torch.bfloat16, device="cuda")
    ref_cache = kv_cache.clone()
    got = cuda_ops.rope_and_cache(q, k, v, positions, cos_sin, kv_cache, slot_mapping)
    want = torch_ops.rope_and_cache(q, k, v, positions, cos_sin, ref_cache, slot_mapping)
    for g, w, name in zip(got, want, ("q", "k")):
        assert g.is_contiguous()
        assert_close(g, w, what=f"CudaOps rotated {name}")
    assert_close(kv_cache, ref_cache, what="CudaOps cache")
    for original, now in zip(before, (q, k, v)):
        assert torch.equal(original, now), "rope_and_cache modified an input"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads", ((32, 8, 128), (16, 16, 64)), ids=("gqa-d128", "mha-d64"))
def test_rope_writes_an_fp8_cache_as_the_reference_rounds_it(library, torch_ops, dtype, heads):
    # The cache holds e4m3(k_out) and e4m3(v) exactly (nearest, saturated at 448: some v are
    # scaled past it); k_out itself is checked against the reference as for a 16-bit cache.
    num_heads, num_kv_heads, head_dim = heads
    num_tokens, num_blocks, block_size = 50, 20, 16
    q, k, v = fused_qkv(num_tokens, num_heads, num_kv_heads, head_dim, dtype=dtype, seed=8)
    v[:5] *= 300.0
    cos_sin = cos_sin_table(head_dim, torch.float32)
    positions, slot_mapping = token_slots(num_tokens=num_tokens,
                                          num_slots=num_blocks * block_size, seed=head_dim)
    poison = 0x7F  # an e4m3 NaN
    kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), poison,
                          dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    (_, k_out), _, ref_cache = run_both(
        library, torch_ops, q=q, k=k, v=v, positions=positions, cos_sin=cos_sin,
        kv_cache=kv_cache, slot_mapping=slot_mapping)
    slots = kv_cache.view(torch.uint8).view(2, -1, num_kv_heads, head_dim)
    want_k = to_cache_dtype(k_out, torch.float8_e4m3fn).view(torch.uint8)
    want_v = to_cache_dtype(v, torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(slots[0, slot_mapping], want_k), "cached k is not e4m3(k_out)"
    assert torch.equal(slots[1, slot_mapping], want_v), "cached v is not e4m3(v)"
    assert int((slots[1, slot_mapping].view(torch.float8_e4m3fn).float().abs() == 448).sum()) > 0
    ref_slots = ref_cache.view(torch.uint8).view(2, -1, num_kv_heads, head_dim)
    assert_close(slots[0, slot_mapping].view(torch.float8_e4m3fn).float(),
                 ref_slots[0, slot_mapping].view(torch.float8_e4m3fn).float(),
                 what="cached k against the reference's", max_error=5e-2)
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool, device="cuda")
    untouched[slot_mapping] = False
    assert bool((slots[:, untouched] == poison).all()), "wrote outside slot_mapping"
