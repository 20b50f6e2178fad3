"""Prefill attention on Hopper's warpgroup MMA (csrc/paged_attention_hopper.cu): its two MMA
steps alone on one tile (the probes: shared-memory layouts and fragment orders), then whole
packed batches through the plan against TorchOps.attention (long prefills with and without a
cached prefix, uneven lengths, block edges, MHA / GQA / MQA, several launches in one step,
key partitions merged, graph replays), over a 16-bit and an e4m3 cache (whose reference
reads the same e4m3 values). Skipped, with the reason, on GPUs other than sm_90."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from server.engine.ops.cuda_attention import paged_attention_into, plan_for
from server.engine.ops.cuda_attention_hopper import HOPPER_MODULE, HOPPER_SMEM_BYTES
from server.engine.ops.cuda_attention_workspace import allocate_workspace
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, captured, cuda_generator,
                               paged_batch, poisoned, random_tensor)

HEADS = {"mha": (16, 16), "gqa": (32, 8), "mqa": (16, 1)}
# name: (query_lens, context_lens, block_size)
BATCHES = {
    "one-prefill": ([1024], [0], 16),
    "uneven-prefills": ([300, 129, 77, 513], [0, 0, 0, 0], 16),
    "prefix-hits": ([200, 96, 131], [37, 1000, 128], 32),
    "with-decodes": ([1, 160, 1, 33, 1], [500, 0, 17, 64, 2047], 16),
}
PROBE_TOLERANCE = 1e-5  # float32 sums of the same products, in another order


@pytest.fixture(scope="module", autouse=True)
def _needs_hopper(library):
    if library.arch != "sm_90":
        pytest.skip(f"the Hopper attention kernel needs an sm_90 GPU, this is {library.arch}")


def _dtype_suffix(dtype: torch.dtype) -> str:
    return "bf16" if dtype is torch.bfloat16 else "fp16"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_scores_probe_gives_q_times_k_transposed(library, dtype):
    generator = cuda_generator(11)
    q = random_tensor((64, 128), dtype=dtype, generator=generator)
    k = random_tensor((128, 128), dtype=dtype, generator=generator)
    s = poisoned((64, 128), dtype=torch.float32)
    library.launch(HOPPER_MODULE, f"wgmma_probe_scores_{_dtype_suffix(dtype)}", grid=(1,),
                   block=(128,), args=(s.data_ptr(), q.data_ptr(), k.data_ptr()),
                   shared_bytes=HOPPER_SMEM_BYTES)
    assert_close(s, q.float() @ k.float().T, what="S = Q K^T", max_error=PROBE_TOLERANCE)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_values_probe_gives_rounded_p_times_v(library, dtype):
    generator = cuda_generator(12)
    p = torch.rand((64, 128), generator=generator, device="cuda")
    v = random_tensor((128, 128), dtype=dtype, generator=generator)
    o = poisoned((64, 128), dtype=torch.float32)
    library.launch(HOPPER_MODULE, f"wgmma_probe_values_{_dtype_suffix(dtype)}", grid=(1,),
                   block=(128,), args=(o.data_ptr(), p.data_ptr(), v.data_ptr()),
                   shared_bytes=HOPPER_SMEM_BYTES)
    expected = p.to(dtype).float() @ v.float()
    assert_close(o, expected, what="O = P V", max_error=PROBE_TOLERANCE)


def _inputs(*, batch: str, heads: str, dtype: torch.dtype, seed: int,
            kv_dtype: torch.dtype | None = None):
    query_lens, context_lens, block_size = BATCHES[batch]
    num_heads, num_kv_heads = HEADS[heads]
    kv_cache, metadata = paged_batch(query_lens=query_lens, context_lens=context_lens,
                                     block_size=block_size, num_kv_heads=num_kv_heads,
                                     head_dim=128, dtype=dtype, seed=seed, kv_dtype=kv_dtype)
    q = random_tensor((metadata.num_tokens, num_heads, 128), dtype=dtype,
                      generator=cuda_generator(seed + 1))
    return q, kv_cache, metadata


@pytest.mark.parametrize("kv_dtype", (None, torch.float8_e4m3fn), ids=("kv16", "kvfp8"))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads", tuple(HEADS))
@pytest.mark.parametrize("batch", tuple(BATCHES))
def test_hopper_kernel_matches_reference(library, torch_ops, batch, heads, dtype, kv_dtype):
    q, kv_cache, metadata = _inputs(batch=batch, heads=heads, dtype=dtype, seed=len(batch),
                                    kv_dtype=kv_dtype)
    plan = plan_for(library, q, kv_cache, metadata)
    assert any(launch.hopper for launch in plan.launches), plan
    out = poisoned(tuple(q.shape), dtype=dtype)
    paged_attention_into(library, out, q, kv_cache, metadata, 128 ** -0.5, plan=plan)
    assert_close(out, torch_ops.attention(q, kv_cache, metadata, 128 ** -0.5),
                 what=f"hopper attention {batch}/{heads}/{dtype}/cache {kv_cache.dtype} {plan}")


@pytest.mark.parametrize("kv_dtype", (None, torch.float8_e4m3fn), ids=("kv16", "kvfp8"))
@pytest.mark.parametrize("num_partitions", (2, 5))
def test_hopper_kernel_splits_keys_into_partitions_and_merges_them(library, torch_ops,
                                                                   num_partitions, kv_dtype):
    q, kv_cache, metadata = _inputs(batch="prefix-hits", heads="gqa", dtype=torch.bfloat16,
                                    seed=7, kv_dtype=kv_dtype)
    plan = dataclasses.replace(plan_for(library, q, kv_cache, metadata),
                               num_partitions=num_partitions)
    assert any(launch.hopper for launch in plan.launches), plan
    workspace = allocate_workspace(plan, num_tokens=q.shape[0], num_heads=q.shape[1],
                                   num_kv_heads=kv_cache.shape[3], head_dim=128,
                                   device=q.device)
    for part in (workspace.part_acc, workspace.part_max, workspace.part_sum):
        part.fill_(float("nan"))  # the merge must read only partitions that were written
    out = poisoned(tuple(q.shape), dtype=q.dtype)
    paged_attention_into(library, out, q, kv_cache, metadata, 128 ** -0.5, plan=plan,
                         workspace=workspace)
    assert_close(out, torch_ops.attention(q, kv_cache, metadata, 128 ** -0.5),
                 what=f"{num_partitions} partitions {plan}")
    assert int(torch.count_nonzero(workspace.counters)) == 0, "counters not returned to 0"


def test_hopper_kernel_replays_in_a_graph_on_new_inputs(library, torch_ops):
    q, kv_cache, metadata = _inputs(batch="prefix-hits", heads="gqa", dtype=torch.bfloat16,
                                    seed=3)
    out = poisoned(tuple(q.shape), dtype=q.dtype)
    plan = plan_for(library, q, kv_cache, metadata)
    paged_attention_into(library, out, q, kv_cache, metadata, 128 ** -0.5, plan=plan)  # warm-up
    graph = captured(lambda: paged_attention_into(library, out, q, kv_cache, metadata,
                                                  128 ** -0.5, plan=plan))
    for seed in (4, 5):
        q.copy_(random_tensor(tuple(q.shape), dtype=q.dtype, generator=cuda_generator(seed)))
        kv_cache.copy_(random_tensor(tuple(kv_cache.shape), dtype=q.dtype,
                                     generator=cuda_generator(seed + 10)))
        out.fill_(float("nan"))
        graph.replay()
        assert_close(out, torch_ops.attention(q, kv_cache, metadata, 128 ** -0.5),
                     what=f"graph replay {seed}")


def test_hopper_kernel_is_off_when_the_environment_says_so(library, monkeypatch):
    q, kv_cache, metadata = _inputs(batch="one-prefill", heads="gqa", dtype=torch.bfloat16,
                                    seed=1)
    monkeypatch.setenv("INFLIGHTD_HOPPER_ATTENTION", "0")
    assert not any(launch.hopper for launch in plan_for(library, q, kv_cache, metadata).launches)
