"""Soft-capping, ALiBi and sliding windows on the paged attention kernels (their "_extras"
builds, csrc/attention_scores.cuh) against TorchOps.attention: every row class (decodes, prefill
chunks, mixed batches), both decode kernels, both decode tile layouts, 16-bit and e4m3
caches, split launches that merge their partitions, and a captured graph replayed with new
lengths. Queries are scaled up so scores reach the cap (tanh saturates) and slopes span MPT's
range, so a wrong sign, order or unit would show: each case first checks that the extras
change the reference output by far more than the tolerance."""

from __future__ import annotations

import pytest
import torch

from server.engine.gpu.kernels import ATTENTION_HEAD_DIMS
from server.engine.models.alibi import alibi_slopes
from server.engine.ops.cuda_attention import paged_attention_into, plan_for
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, captured, cuda_generator,
                               paged_batch, random_tensor, relative_error, with_new_lengths)
from tests.gpu.test_paged_attention_kernel import (BATCHES, FULL_MATRIX_HEAD_DIMS, HEADS,
                                                   KEY_SPLITS, KV_DTYPES, TRANSPOSED,
                                                   launch_and_compare, make_inputs)

Q_SCALE = 4.0  # scores of about N(0, 16): a softcap of 5 bends most of them
# name: (softcap, ALiBi, window) as Gemma 2 (softcap 50; here 5 to bite), MPT/BLOOM (ALiBi),
# both, a sliding window (Mistral's 4096; here 37 keys, across block and tile edges), all three
WINDOW = 37
EXTRAS = {"softcap": (5.0, False, None), "alibi": (None, True, None),
          "softcap+alibi": (5.0, True, None), "window": (None, False, WINDOW),
          "all": (5.0, True, WINDOW)}
MIN_EFFECT = 0.1  # relative change the extras make to the reference output, at least
# (extras, heads, head_dim): every combination at head_dim 64, 96 and 128; the sizes added
# since (80, 256) with both extras at once over GQA
# the window alone at head_dim 64 and 128, and all three at every head_dim, over GQA
EXTRAS_CASES = pytest.mark.parametrize(("extras", "heads", "head_dim"), [
    pytest.param(extras, heads, head_dim, id=f"{head_dim}-{heads}-{extras}")
    for extras in EXTRAS for heads in ("mha", "gqa") for head_dim in ATTENTION_HEAD_DIMS
    if (extras in ("softcap", "alibi") and head_dim in FULL_MATRIX_HEAD_DIMS)
    or (extras == "softcap+alibi" and (head_dim in FULL_MATRIX_HEAD_DIMS or heads == "gqa"))
    or (extras == "window" and heads == "gqa" and head_dim in (64, 128))
    or (extras == "all" and heads == "gqa")])


def extras_args(name: str, num_heads: int) -> dict:
    softcap, alibi, window = EXTRAS[name]
    slopes = alibi_slopes(num_heads, bias_max=8.0).cuda() if alibi else None
    return {"softcap": softcap, "alibi_slopes": slopes, "window": window}


def run_extras_case(library, torch_ops, *, extras: str, batch: str, heads: str, head_dim: int,
                    dtype: torch.dtype, seed: int, num_partitions: int | None = None,
                    decode_key_split: int = 1, kv_dtype: torch.dtype | None = None,
                    transposed: bool = False):
    q, kv_cache, metadata = make_inputs(batch=batch, heads=heads, head_dim=head_dim,
                                        dtype=dtype, seed=seed, kv_dtype=kv_dtype)
    q = (q.float() * Q_SCALE).to(dtype)
    scale = head_dim ** -0.5
    kwargs = extras_args(extras, q.shape[1])
    reference = torch_ops.attention(q, kv_cache, metadata, scale, **kwargs)
    plain = torch_ops.attention(q, kv_cache, metadata, scale)
    assert relative_error(plain, reference) > MIN_EFFECT, f"{extras} on {batch}: no effect"
    return launch_and_compare(library, torch_ops, q, kv_cache, metadata, scale=scale,
                              what=f"{extras} attention {batch}/{heads}",
                              num_partitions=num_partitions,
                              decode_key_split=decode_key_split, transposed=transposed,
                              extras=kwargs)


@TRANSPOSED
@KV_DTYPES
@KEY_SPLITS
@EXTRAS_CASES
@pytest.mark.parametrize("batch", tuple(BATCHES))
def test_extras_match_reference(library, torch_ops, extras, batch, heads, head_dim,
                                decode_key_split, kv_dtype, transposed):
    run_extras_case(library, torch_ops, extras=extras, batch=batch, heads=heads,
                    head_dim=head_dim, dtype=torch.bfloat16, seed=len(batch) * 5 + head_dim,
                    decode_key_split=decode_key_split, kv_dtype=kv_dtype,
                    transposed=transposed)


@KEY_SPLITS
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads", tuple(HEADS))
@pytest.mark.parametrize("batch", ("mixed", "decode"))
@pytest.mark.parametrize("extras", tuple(EXTRAS))
def test_extras_in_both_dtypes_and_every_group(library, torch_ops, extras, batch, heads,
                                               dtype, decode_key_split):
    run_extras_case(library, torch_ops, extras=extras, batch=batch, heads=heads, head_dim=64,
                    dtype=dtype, seed=17, decode_key_split=decode_key_split)


@TRANSPOSED
@KV_DTYPES
@KEY_SPLITS
@pytest.mark.parametrize("num_partitions", (1, 2, 7, 64))
@pytest.mark.parametrize("batch", ("mixed", "long-decode"))
@pytest.mark.parametrize("extras", tuple(EXTRAS))
def test_extras_with_any_partition_count(library, torch_ops, extras, batch, num_partitions,
                                         decode_key_split, kv_dtype, transposed):
    # the merge sees partitions whose maxima ALiBi pushed far apart
    run_extras_case(library, torch_ops, extras=extras, batch=batch, heads="gqa", head_dim=128,
                    dtype=torch.float16, seed=num_partitions + 3,
                    num_partitions=num_partitions, decode_key_split=decode_key_split,
                    kv_dtype=kv_dtype, transposed=transposed)


@KV_DTYPES
@pytest.mark.parametrize("extras", tuple(EXTRAS))
def test_captured_extras_decode_replays_with_new_lengths(library, torch_ops, extras, kv_dtype):
    # the slopes tensor is the layer's own (persistent): the graph reads it at every replay
    num_heads, num_kv_heads = HEADS["gqa"]
    kv_cache, metadata = paged_batch(query_lens=[1, 1, 1], context_lens=[3999] * 3,
                                     block_size=16, num_kv_heads=num_kv_heads, head_dim=128,
                                     dtype=torch.bfloat16, seed=81, kv_dtype=kv_dtype)
    q = random_tensor((3, num_heads, 128), dtype=torch.bfloat16, generator=cuda_generator(82),
                      scale=Q_SCALE)
    kwargs = extras_args(extras, num_heads)
    plan = plan_for(library, q, kv_cache, metadata, extras=True)
    assert plan.num_partitions > 1, plan
    out = torch.empty_like(q)
    scale = 128 ** -0.5

    def attend():
        paged_attention_into(library, out, q, kv_cache, metadata, scale, plan=plan, **kwargs)

    graph = captured(attend)
    for seq_lens in ([4000, 2500, 700], [33, 1, 2100], [700, 2, 1]):
        now = with_new_lengths(metadata, seq_lens)
        out.fill_(float("nan"))
        graph.replay()
        assert_close(out, torch_ops.attention(q, kv_cache, now, scale, **kwargs),
                     what=f"{extras} replay with seq_lens {seq_lens}")


def test_cuda_ops_attention_with_extras_matches_torch_ops(cuda_ops, torch_ops):
    kv_cache, metadata = paged_batch(query_lens=[12, 1, 1], context_lens=[20, 700, 3],
                                     block_size=16, num_kv_heads=4, head_dim=128,
                                     dtype=torch.bfloat16, seed=19)
    q = random_tensor((metadata.num_tokens, 16, 128), dtype=torch.bfloat16,
                      generator=cuda_generator(20), scale=Q_SCALE)
    kwargs = {"softcap": 50.0, "alibi_slopes": alibi_slopes(16, bias_max=8.0).cuda(),
              "window": 300}  # the second sequence's 701 keys reach past it
    assert_close(cuda_ops.attention(q, kv_cache, metadata, 0.1, **kwargs),
                 torch_ops.attention(q, kv_cache, metadata, 0.1, **kwargs),
                 what="CudaOps.attention with softcap 50 and ALiBi")
