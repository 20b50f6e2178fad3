"""Phi-3's LongRoPE through the whole engine: a request rotates with the short factors
while it is no longer than the original context and with the long ones (every position)
once it is, as transformers does, recomputing its KV when it grows past the original
length; the two tables' KV never share prefix-cache blocks."""

from __future__ import annotations

import pytest
import torch

from server.engine.llm import LLM
from server.engine.models.config import ModelArchConfig
from server.engine.models.rotary import build_cos_sin
from server.scheduler.request import SamplingParams
from tests.golden.helpers import _COMMON, hf_logits, single_torch_thread
from tests.golden.test_sliding_window_engine import hf_greedy

ORIGINAL = 24  # original_max_position_embeddings: the tests' sequences cross it


def make_long_rope_model():
    import transformers

    half_head = 8  # head_dim 16
    config = transformers.Phi3Config(**{
        **_COMMON, "num_attention_heads": 4, "num_key_value_heads": 2,
        "tie_word_embeddings": False, "pad_token_id": 0,
        "original_max_position_embeddings": ORIGINAL,
        "rope_scaling": {"type": "longrope",
                         "short_factor": [1.0 + 0.1 * i for i in range(half_head)],
                         "long_factor": [1.5 + 0.7 * i for i in range(half_head)]}})
    config._attn_implementation = "eager"
    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 1.5
                            / param.shape[-1] ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    model = make_long_rope_model()
    path = tmp_path_factory.mktemp("phi3-longrope")
    model.save_pretrained(path)
    return model, str(path)


def test_both_rotary_tables_are_bit_identical_to_hf(phi3):
    model, path = phi3
    arch = ModelArchConfig.from_hf(model.config.to_dict() | {"architectures":
                                                             ["Phi3ForCausalLM"]})
    assert arch.long_rope_threshold == ORIGINAL
    rows = arch.max_position_embeddings
    table = build_cos_sin(head_dim=arch.head_dim, rope_theta=arch.rope_theta,
                          rope_scaling=arch.rope_scaling_dict, max_positions=rows,
                          dtype=torch.float32, device="cpu")
    half = arch.head_dim // 2
    probe = torch.zeros(1)
    short_cos, short_sin = model.model.rotary_emb(probe, torch.arange(ORIGINAL)[None])
    long_cos, long_sin = model.model.rotary_emb(probe, torch.arange(rows)[None])
    assert torch.equal(table[:ORIGINAL, :half], short_cos[0, :, :half])
    assert torch.equal(table[:ORIGINAL, half:], short_sin[0, :, :half])
    assert torch.equal(table[rows:, :half], long_cos[0, :, :half])
    assert torch.equal(table[rows:, half:], long_sin[0, :, :half])


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_requests_crossing_and_past_the_original_context_give_transformers_tokens(
        phi3, async_scheduling):
    model, path = phi3
    short_prompt = [5, 17, 99, 3, 42, 8, 77, 120, 6, 31]  # crosses 24 while decoding
    long_prompt = short_prompt * 3  # 30 tokens: the long table from the start
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    with single_torch_thread():
        llm = LLM(path, device="cpu", block_size=4, kv_cache_tokens=512,
                  max_num_batched_tokens=16, async_scheduling=async_scheduling)
        assert llm.engine.scheduler.config.long_rope_threshold == ORIGINAL
        # the long prompt runs first, so its long-table blocks are cached when the short
        # one (same first 10 tokens) is admitted: it must not hit them
        first = llm.generate([long_prompt], params)[0]
        second = llm.generate([short_prompt, long_prompt], params)
        expected = [hf_greedy(model, prompt, num_tokens=24)
                    for prompt in (long_prompt, short_prompt, long_prompt)]
    assert [list(first.token_ids)] + [list(c.token_ids) for c in second] == expected
    assert llm.engine.stats().num_preemptions >= 1  # the short one recomputed at 25 tokens
    llm.engine.scheduler.block_manager.check_invariants()
