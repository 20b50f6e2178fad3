"""Prompt logprobs through the whole engine (scheduler, runner, sampler) on the CPU
reference path, sync and async: every prompt token's logprob, rank and top-k equal
log_softmax of transformers' own full forward pass of the prompt, whatever chunks the
prefill was cut into, beside a prefix-cache hit of another request, and under
preemption."""

from __future__ import annotations

import pytest
import torch

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams
from tests.golden.helpers import hf_logits, saved_hf_model, tiny_llm_that_preempts

BLOCK_SIZE = 4
CHUNK = 8  # max_num_batched_tokens: longer prompts are prefilled over several steps
NUM_TOP = 3
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    hf_model, model_dir = saved_hf_model(tmp_path_factory, "llama-gqa-tied", seed=11)
    return hf_model, str(model_dir)


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async"])
def llm(request, saved_model) -> LLM:
    return LLM(saved_model[1], device="cpu", block_size=BLOCK_SIZE, kv_cache_tokens=512,
               max_num_batched_tokens=CHUNK, async_scheduling=request.param)


def assert_match_transformers(hf_model, prompt: list[int], prompt_logprobs) -> None:
    reference = hf_logits(hf_model, prompt).log_softmax(dim=-1)
    assert len(prompt_logprobs) == len(prompt) and prompt_logprobs[0] is None
    for index, entry in enumerate(prompt_logprobs[1:], start=1):
        expected = reference[index - 1]
        token_id = prompt[index]
        assert entry.token_id == token_id
        assert entry.logprob == pytest.approx(expected[token_id].item(), abs=1e-4), index
        assert entry.rank == int((expected > expected[token_id]).sum()) + 1
        top = expected.topk(NUM_TOP)
        assert entry.top_token_ids == tuple(top.indices.tolist())
        assert entry.top_logprobs == pytest.approx(top.values.tolist(), abs=1e-4)


def scored(max_tokens: int = 0, **extra) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                          prompt_logprobs=NUM_TOP, **extra)


def test_prompt_logprobs_equal_transformers_across_chunk_boundaries(llm, saved_model):
    hf_model, _ = saved_model
    prompts = [[17], [5, 9, 14, 3, 77], [(31 * i + 7) % 256 for i in range(23)],
               [(11 * i + 2) % 256 for i in range(CHUNK + 1)]]
    params = [scored(), scored(), scored(max_tokens=2, logprobs=1), scored()]
    outs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        assert_match_transformers(hf_model, prompt, out.prompt_logprobs)
    assert [o.token_ids for o in outs[:2]] + [outs[3].token_ids] == [(), (), ()]
    assert {o.finish_reason for o in outs} == {"length"}
    # the sampled tokens are unchanged: transformers' greedy ones, with their logprobs
    last = hf_logits(hf_model, prompts[2])[-1]
    assert outs[2].token_ids[0] == int(last.argmax())
    assert outs[2].logprobs[0].logprob == pytest.approx(
        last.log_softmax(dim=-1).max().item(), abs=1e-4)


def test_a_prefix_cache_hit_of_another_request_leaves_them_whole(llm, saved_model):
    hf_model, _ = saved_model
    shared = [(13 * i + 1) % 256 for i in range(18)]
    llm.generate(shared, SamplingParams(temperature=0, max_tokens=1))  # into the cache
    prompts = [shared, shared, shared[:12] + [200, 201, 202]]
    params = [scored(), SamplingParams(temperature=0, max_tokens=2), scored(max_tokens=1)]
    outs = llm.generate(prompts, params)
    assert outs[1].num_cached_tokens == 16 and outs[1].prompt_logprobs is None
    for prompt, out in zip((prompts[0], prompts[2]), (outs[0], outs[2])):
        assert out.num_cached_tokens == 0  # took no hit: every position was computed
        assert_match_transformers(hf_model, prompt, out.prompt_logprobs)


def test_preempted_requests_get_the_prompt_logprobs_of_an_undisturbed_run():
    prompts = [[7 + i, 100 + 3 * i, 41, 9] * (3 + i % 4) for i in range(8)]
    params = [SamplingParams(temperature=0, max_tokens=24 - i, ignore_eos=True,
                             prompt_logprobs=i % 3) for i in range(8)]
    roomy = LLM("dummy:tiny", device="cpu", kv_cache_tokens=2048)
    expected = roomy.generate(prompts, params)
    for async_scheduling in (False, True):
        cramped = tiny_llm_that_preempts(async_scheduling=async_scheduling)
        got = cramped.generate(prompts, params)
        assert cramped.engine.stats().num_preemptions > 0
        for want, out in zip(expected, got):
            assert out.token_ids == want.token_ids
            assert [e.token_id for e in out.prompt_logprobs[1:]] == \
                [e.token_id for e in want.prompt_logprobs[1:]]
            assert [e.top_token_ids for e in out.prompt_logprobs[1:]] == \
                [e.top_token_ids for e in want.prompt_logprobs[1:]]
            assert torch.allclose(torch.tensor([e.logprob for e in out.prompt_logprobs[1:]]),
                                  torch.tensor([e.logprob for e in want.prompt_logprobs[1:]]),
                                  atol=1e-4)
