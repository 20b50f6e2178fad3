"""The bulk-copy decode attention kernel (csrc/paged_decode_bulk.cu, ops/cuda_decode_bulk.py)
against TorchOps.attention: decodes over 8 kv heads of head_dim 128, 16-bit and e4m3 caches,
uneven lengths and block edges, one part or many (the last part in merges and leaves its
counter at 0), keys past a sequence's length holding NaN in its last block, and replays of a
captured graph with new lengths; the engine's decode steps with the kernel switched on; and
the build's timing of it and the tuned choice of steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from server.engine.gpu.kernel_args import KernelArgumentError
from server.engine.ops.cuda_decode_bulk import (COUNTERS, DECODE_BULK_ENV, bulk_partitions,
                                                decode_bulk_fits, decode_bulk_into)
from server.engine.gpu.tune_decode_bulk import BULK_TUNING_SEQS, tune_decode_bulk
from server.engine.gpu.tuning import BulkChoice, KernelTuning, TunedCudaOps, tune_decode_partitions
from server.engine.ops import cuda as cuda_ops_module
from server.engine.step.runner import ModelRunner
from tests.golden.helpers import HandBatcher
from tests.gpu.helpers import (DTYPE_IDS, DTYPES, assert_close, captured, cuda_generator,
                               paged_batch, poisoned, random_tensor, relative_error,
                               with_new_lengths)
from tests.gpu.test_cuda_graphs import (BLOCK_SIZE, MAX_MODEL_LEN, NUM_BLOCKS, SMALL_LLAMA,
                                        small_model_source)

KV_DTYPES = pytest.mark.parametrize("kv_dtype", (None, torch.float8_e4m3fn),
                                    ids=("kv16", "kvfp8"))
GROUPS = pytest.mark.parametrize("num_heads", (8, 32, 64), ids=("g1", "g4", "g8"))
# context lengths of one decode step: tile and block edges, one key, long and short together
CONTEXTS = {
    "edges": ([0, 1, 14, 15, 16, 17, 31, 32, 33, 255, 256, 257], 16),
    "long": ([8191, 3000, 5], 16),
    "blocks-of-32": ([0, 31, 32, 100, 1000], 32),
}
HEAD_DIM = 128
KV_HEADS = 8
ENGINE_MAX_ERROR = 2e-2  # bf16 roundings, other summation orders and key splits


def decode_step(*, contexts: list[int], block_size: int, num_heads: int, dtype: torch.dtype,
                kv_dtype: torch.dtype | None, seed: int, poison: bool = True):
    """(q, the cache the kernel reads, metadata, the cache without the poison): the
    reference reads the clean copy, as its masked softmax still multiplies a NaN value by a
    zero weight."""
    kv_cache, metadata = paged_batch(query_lens=[1] * len(contexts), context_lens=contexts,
                                     block_size=block_size, num_kv_heads=KV_HEADS,
                                     head_dim=HEAD_DIM, dtype=dtype, seed=seed,
                                     kv_dtype=kv_dtype)
    clean = kv_cache.clone()
    if poison:
        poison_past_lengths(kv_cache, metadata)
    q = random_tensor((metadata.num_tokens, num_heads, HEAD_DIM), dtype=dtype,
                      generator=cuda_generator(seed + 1))
    return q, kv_cache, metadata, clean


def poison_past_lengths(kv_cache: torch.Tensor, metadata) -> None:
    """NaN into every slot of a sequence's last block past its length: the kernel copies
    those rows with the tile and must neither weigh their keys nor add their values."""
    block_size = kv_cache.shape[2]
    nan = torch.tensor(float("nan"), dtype=torch.float32).to(kv_cache.dtype)
    for seq, seq_len in enumerate(metadata.seq_lens_host):
        last = int(metadata.block_tables[seq, (seq_len - 1) // block_size])
        kv_cache[:, last, (seq_len - 1) % block_size + 1:] = nan.to(kv_cache.device)


def check(library, torch_ops, q, kv_cache, metadata, *, clean: torch.Tensor, what: str,
          num_partitions: int | None = None) -> int:
    out = poisoned(tuple(q.shape), dtype=q.dtype)
    parts = decode_bulk_into(library, out, q, kv_cache, metadata, HEAD_DIM ** -0.5,
                             num_partitions=num_partitions)
    what = f"{what}, {parts} parts, {q.dtype} over {kv_cache.dtype}"
    assert_close(out, torch_ops.attention(q, clean, metadata, HEAD_DIM ** -0.5), what=what)
    left = int(torch.count_nonzero(library.zeroed_int32(COUNTERS, 0)))
    assert left == 0, f"{what}: {left} arrival counters were not returned to 0"
    return parts


@KV_DTYPES
@GROUPS
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("contexts", tuple(CONTEXTS))
def test_bulk_decode_matches_the_reference(library, torch_ops, contexts, dtype, num_heads,
                                           kv_dtype):
    lens, block_size = CONTEXTS[contexts]
    q, kv_cache, metadata, clean = decode_step(contexts=lens, block_size=block_size,
                                        num_heads=num_heads, dtype=dtype, kv_dtype=kv_dtype,
                                        seed=3)
    assert decode_bulk_fits(library.arch, q=q, kv_cache=kv_cache, metadata=metadata,
                            extras=False)
    check(library, torch_ops, q, kv_cache, metadata, clean=clean, what=contexts)


@KV_DTYPES
@pytest.mark.parametrize("num_partitions", (1, 2, 3, 7, 64))
def test_any_part_count_gives_the_same_attention(library, torch_ops, kv_dtype,
                                                 num_partitions):
    # parts past a short sequence's tiles are empty: they still count in, and merge nothing
    q, kv_cache, metadata, clean = decode_step(contexts=[4000, 40, 0, 700], block_size=16,
                                        num_heads=32, dtype=torch.bfloat16,
                                        kv_dtype=kv_dtype, seed=11)
    assert check(library, torch_ops, q, kv_cache, metadata, clean=clean, what="parts",
                 num_partitions=num_partitions) == num_partitions


@KV_DTYPES
def test_captured_bulk_decode_replays_with_new_lengths(library, torch_ops, kv_dtype):
    q, kv_cache, metadata, clean = decode_step(contexts=[3999] * 3, block_size=16,
                                               num_heads=32, dtype=torch.bfloat16,
                                               kv_dtype=kv_dtype, seed=21)
    parts = bulk_partitions(num_seqs=3, max_seq_len=4000, num_sms=library.num_sms)
    assert parts > 1
    out = torch.empty_like(q)

    def attend():
        decode_bulk_into(library, out, q, kv_cache, metadata, HEAD_DIM ** -0.5)

    graph = captured(attend)
    for seq_lens in ([4000, 2500, 700], [33, 1, 2100], [1, 4000, 64], [700, 2, 1]):
        now = with_new_lengths(metadata, seq_lens)
        out.fill_(float("nan"))
        graph.replay()
        assert_close(out, torch_ops.attention(q, clean, now, HEAD_DIM ** -0.5),
                     what=f"replay with seq_lens {seq_lens}")
        assert int(torch.count_nonzero(library.zeroed_int32(COUNTERS, 0))) == 0


def test_steps_the_kernel_cannot_take_are_refused(library):
    q, kv_cache, metadata, _ = decode_step(contexts=[5, 9], block_size=16, num_heads=32,
                                           dtype=torch.bfloat16, kv_dtype=None, seed=31)
    prefill = dataclasses.replace(metadata, num_tokens=3, max_query_len=2,
                                  query_lens_host=(2, 1))
    four_heads = kv_cache[:, :, :, :4].contiguous()
    for bad_cache, bad_metadata in ((kv_cache, prefill), (four_heads, metadata)):
        assert not decode_bulk_fits(library.arch, q=q, kv_cache=bad_cache,
                                    metadata=bad_metadata, extras=False)
        with pytest.raises(KernelArgumentError, match="bulk decode kernel"):
            decode_bulk_into(library, torch.empty_like(q), q, bad_cache, bad_metadata, 0.1)


@pytest.mark.parametrize("kv_cache_dtype", ("auto", "fp8"))
def test_engine_decode_steps_on_the_bulk_kernel_track_the_other_kernels(monkeypatch,
                                                                       kv_cache_dtype):
    """A sequence's decode steps, eager and replayed in the engine's graphs, with the bulk
    kernel switched on against the same steps on the cp.async kernels."""
    config = {**SMALL_LLAMA, "hidden_size": 1024, "num_attention_heads": 32,
              "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM}
    options = dict(dtype=torch.bfloat16, device="cuda", block_size=BLOCK_SIZE,
                   num_blocks=NUM_BLOCKS, max_num_seqs=8, max_model_len=MAX_MODEL_LEN,
                   kv_cache_dtype=kv_cache_dtype)
    monkeypatch.setenv(DECODE_BULK_ENV, "0")
    plain = ModelRunner(small_model_source(config), **options)
    monkeypatch.setenv(DECODE_BULK_ENV, "1")
    bulk = ModelRunner(small_model_source(config), **options)
    assert bulk.ops.decode_bulk_forced and plain.ops.decode_bulk_forced is False
    batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    for req_id, length in (("a", 300), ("b", 17), ("c", 1)):
        batcher.add(req_id=req_id, prompt_token_ids=[(5 * i) % 4000 + 3 for i in range(length)])
    out = batcher.step({"a": None, "b": None, "c": None})
    for step in range(12):
        want = plain.forward_logits(out)[1]
        eager = bulk.forward_logits(out, allow_graph=False)[1].clone()
        graph = bulk.forward_logits(out)[1]
        assert relative_error(eager, want) <= ENGINE_MAX_ERROR, step
        assert relative_error(graph, want) <= ENGINE_MAX_ERROR, step
        tokens = want.argmax(-1).tolist()
        batcher.record(dict(zip("abc", tokens)))
        out = batcher.step({"a": 1, "b": 1, "c": 1})
    assert bulk.graphs.num_replays >= 11


def test_the_build_times_the_bulk_kernel_for_both_cache_dtypes(library):
    shape = dict(num_heads=32, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, dtype=torch.bfloat16,
                 block_size=16, max_model_len=512)
    partitions = tune_decode_partitions(library, **shape)
    choices = tune_decode_bulk(library, partitions, **shape)
    assert [(c.kv_dtype, c.max_context) for c in choices] == [("bfloat16", 512),
                                                              ("float8_e4m3fn", 512)]
    for choice in choices:
        assert [n for n, _, _ in choice.timings_us] == list(BULK_TUNING_SEQS)
        assert all(plan > 0 and bulk > 0 for _, plan, bulk in choice.timings_us)
        assert choice.bulk_seqs == tuple(n for n, plan, bulk in choice.timings_us
                                         if bulk < plan)


def test_tuned_ops_give_the_bulk_kernel_the_steps_the_build_chose(library, torch_ops,
                                                                  monkeypatch):
    monkeypatch.delenv(DECODE_BULK_ENV, raising=False)
    # no poison: the steps the plan keeps go to the cp.async kernels, which are not
    # built to ignore NaN past a sequence's length
    q, kv_cache, metadata, _ = decode_step(contexts=[100, 7], block_size=16, num_heads=32,
                                           dtype=torch.bfloat16,
                                           kv_dtype=torch.float8_e4m3fn, seed=41, poison=False)
    calls = []
    monkeypatch.setattr(cuda_ops_module, "decode_bulk_into",
                        lambda *args: calls.append(args) or decode_bulk_into(*args))
    timings = ((1, 2.0, 1.0), (4, 2.0, 3.0))
    for bulk_seqs, expected in (((1,), 1), ((4,), 0)):  # 2 sequences: the 1-sequence choice
        tuning = KernelTuning("sm_90", "gpu", "bfloat16", (), decode_bulk=(
            BulkChoice("float8_e4m3fn", 1 << 20, bulk_seqs, timings),))
        calls.clear()
        out = TunedCudaOps(library, tuning).attention(q, kv_cache, metadata, HEAD_DIM ** -0.5)
        assert len(calls) == expected
        assert_close(out, torch_ops.attention(q, kv_cache, metadata, HEAD_DIM ** -0.5),
                     what=f"tuned ops, bulk for {bulk_seqs}")
