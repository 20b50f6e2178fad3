"""A model whose every layer slides (Mistral v0.1's kind) through the whole engine: blocks
before each request's window go back to the pool, so requests grow past the whole KV
cache, side by side, with async scheduling too, and still give transformers' greedy
tokens (its full-sequence forward, argmax at every position)."""

from __future__ import annotations

import pytest
import torch

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams
from tests.golden.helpers import hf_logits, make_hf_model, single_torch_thread

BLOCK_SIZE = 4
KV_CACHE_TOKENS = 48  # 12 blocks for two requests of 70 tokens each


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """(HF model, its saved directory) for the tiny Mistral with a window of 7."""
    model = make_hf_model("mistral-sliding")
    path = tmp_path_factory.mktemp("mistral-sliding")
    model.save_pretrained(path)
    return model, str(path)


def hf_greedy(model, prompt: list[int], *, num_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(num_tokens):
        tokens.append(int(hf_logits(model, tokens)[-1].argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_requests_longer_than_the_kv_cache_give_transformers_tokens(windowed,
                                                                   async_scheduling):
    hf_model, path = windowed
    prompts = [[5 + i, 17, 99, 3, 42, 8, 77, 120 + i, 6, 31, 250, 9] for i in range(2)]
    params = SamplingParams(temperature=0, max_tokens=58, ignore_eos=True)
    with single_torch_thread():
        llm = LLM(path, device="cpu", block_size=BLOCK_SIZE, kv_cache_tokens=KV_CACHE_TOKENS,
                  max_num_batched_tokens=8, async_scheduling=async_scheduling)
        assert llm.engine.scheduler.config.kv_window == 7
        got = llm.generate(prompts, params)
        expected = [hf_greedy(hf_model, prompt, num_tokens=58) for prompt in prompts]
    assert [list(c.token_ids) for c in got] == expected
    assert len(prompts[0]) + 58 > KV_CACHE_TOKENS
    stats = llm.engine.stats()
    assert stats.num_preemptions == 0  # each held its window, never the whole context
    assert llm.engine.scheduler.stats.num_free_blocks == llm.engine.info.num_kv_blocks
    llm.engine.scheduler.block_manager.check_invariants()
