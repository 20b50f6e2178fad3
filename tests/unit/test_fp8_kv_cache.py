"""--kv-cache-dtype fp8 on the CPU reference path: the option, the pool it sizes, what a
write stores (e4m3, nearest, saturated at 448), what attention reads back, and a model
running on it. The GPU kernels are checked against this path in tests/gpu/."""

from __future__ import annotations

import pytest
import torch

from server.cli import serve_config
from server.config import CacheConfig
from server.engine.attention.metadata import AttentionMetadata
from server.engine.llm import LLM
from server.engine.ops.torch_ref import TorchOps, to_cache_dtype, write_kv
from server.engine.step.runner import ModelRunner
from server.engine.loading.weights import resolve_model
from server.kvcache.kv_pool import (FP8_KV_DTYPE, KVCacheDtypeError, KVPool, bytes_per_block,
                                    kv_cache_dtype_for)
from server.scheduler.request import SamplingParams
from tests.api.test_cli import parse
from tests.gpu.helpers import relative_error
from tests.unit.test_build import first_step_logits

# A 2-layer model's logits, its keys and values rounded to e4m3 (3 mantissa bits) on the way
FP8_KV_LOGITS_MAX_ERROR = 0.1


def test_option_names_the_pool_dtype_and_refuses_others():
    assert kv_cache_dtype_for("auto", torch.bfloat16) == torch.bfloat16
    assert kv_cache_dtype_for("fp8", torch.bfloat16) == FP8_KV_DTYPE
    assert kv_cache_dtype_for("fp8_e4m3", torch.float16) == FP8_KV_DTYPE
    with pytest.raises(ValueError, match="--kv-cache-dtype must be one of auto, fp8"):
        CacheConfig(kv_cache_dtype="int8")
    with pytest.raises(KVCacheDtypeError, match="--kv-cache-dtype"):
        kv_cache_dtype_for("fp8_e5m2", torch.bfloat16)


def test_serve_option_reaches_the_cache_config():
    assert serve_config(parse("serve", "--kv-cache-dtype", "fp8")).cache.kv_cache_dtype == "fp8"
    assert serve_config(parse("serve")).cache.kv_cache_dtype == "auto"
    with pytest.raises(SystemExit):
        parse("serve", "--kv-cache-dtype", "int8")


def test_fp8_block_takes_half_the_bytes_of_bf16_so_the_same_memory_holds_twice_the_tokens():
    shape = dict(num_layers=4, num_kv_heads=2, head_dim=64, block_size=16)
    bf16 = bytes_per_block(**shape, dtype=torch.bfloat16)
    assert bytes_per_block(**shape, dtype=FP8_KV_DTYPE) * 2 == bf16
    pool = KVPool(num_blocks=3, **shape, dtype=FP8_KV_DTYPE, device="cpu")
    assert pool.kv_cache.dtype == FP8_KV_DTYPE and pool.bytes_per_token * 2 * 16 == bf16


def test_write_stores_the_nearest_e4m3_and_saturates_at_448():
    kv_cache = torch.zeros((2, 2, 4, 1, 16), dtype=FP8_KV_DTYPE)
    k = torch.linspace(-3.0, 3.0, 32).reshape(2, 1, 16)
    v = k.clone()
    k[0, 0, :3] = torch.tensor([1000.0, -1e4, 449.0])
    write_kv(kv_cache, k, v, torch.tensor([5, 2]))
    stored_k = kv_cache[0].reshape(-1, 1, 16)[[5, 2]].float()
    assert stored_k[0, 0, :3].tolist() == [448.0, -448.0, 448.0]
    assert torch.equal(stored_k[:, :, 3:], k[:, :, 3:].to(FP8_KV_DTYPE).float())
    assert torch.equal(kv_cache[1].reshape(-1, 1, 16)[[5, 2]].float(),
                       to_cache_dtype(v, FP8_KV_DTYPE).float())
    assert (stored_k[:, :, 3:] - k[:, :, 3:]).abs().max() <= 2 ** -4 * 3  # half an e4m3 step
    assert not kv_cache[0].reshape(-1, 1, 16)[[0, 1, 3, 4, 6, 7]].float().any()


def decode_and_chunk(*, seed: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """q, a random cache and the metadata of one step: a decode at context 9 (blocks 3, 0,
    5) and a 3-token chunk after 5 cached keys (blocks 1, 4); blocks of 4, GQA 4 / 2."""
    gen = torch.Generator().manual_seed(seed)
    kv_cache = torch.randn((2, 6, 4, 2, 16), generator=gen)
    q = torch.randn((4, 4, 16), generator=gen)
    metadata = AttentionMetadata(
        num_tokens=4, num_seqs=2, query_start_loc=torch.tensor([0, 1, 4], dtype=torch.int32),
        seq_lens=torch.tensor([10, 8], dtype=torch.int32),
        context_lens=torch.tensor([9, 5], dtype=torch.int32),
        block_tables=torch.tensor([[3, 0, 5], [1, 4, 0]], dtype=torch.int32),
        slot_mapping=torch.tensor([21, 17, 18, 19]), max_query_len=3, max_seq_len=10,
        query_lens_host=(1, 3), seq_lens_host=(10, 8))
    return q, kv_cache, metadata


def test_attention_over_an_fp8_cache_equals_attention_over_its_values_widened():
    q, kv_cache, metadata = decode_and_chunk(seed=3)
    kv8 = to_cache_dtype(kv_cache, FP8_KV_DTYPE)
    ops = TorchOps()
    assert torch.equal(ops.attention(q, kv8, metadata, 0.125),
                       ops.attention(q, kv8.float(), metadata, 0.125))


def test_model_on_an_fp8_cache_stays_close_to_the_full_precision_cache():
    def runner(kv_cache_dtype: str) -> ModelRunner:
        return ModelRunner(resolve_model("dummy:tiny-llama3"), dtype=torch.float32,
                           device="cpu", block_size=16, num_blocks=4,
                           kv_cache_dtype=kv_cache_dtype)

    fp8, full = runner("fp8"), runner("auto")
    assert fp8.kv_pool.kv_cache.dtype == FP8_KV_DTYPE
    error = relative_error(first_step_logits(fp8), first_step_logits(full))
    assert 0 < error <= FP8_KV_LOGITS_MAX_ERROR


def test_llm_with_an_fp8_cache_generates_and_says_so():
    llm = LLM("dummy:tiny-llama3", device="cpu", kv_cache_dtype="fp8", kv_cache_tokens=1024)
    assert llm.engine.info.kv_cache_dtype == "float8_e4m3fn"
    out = llm.generate([[5, 6, 7, 8] * 9], SamplingParams(temperature=0, max_tokens=6,
                                                          ignore_eos=True))
    assert len(out[0].token_ids) == 6
