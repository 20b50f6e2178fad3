"""The engine with async scheduling (the runner feeds pending tokens from its own device
output) gives exactly the tokens of the synchronous engine, on the CPU reference path."""

from __future__ import annotations

import pytest

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams
from tests.golden.helpers import single_torch_thread, tiny_llm_that_preempts


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_torch_thread():
        yield


def _llm(*, async_scheduling: bool) -> LLM:
    return tiny_llm_that_preempts(async_scheduling=async_scheduling)


def _prompts() -> list[list[int]]:
    return [[7 + i, 100 + 3 * i, 41, 9] * (2 + i % 4) for i in range(8)]


def _params(stop_token_id: int) -> list[SamplingParams]:
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    return [
        greedy,
        SamplingParams(temperature=0, max_tokens=20, stop_token_ids=(stop_token_id,)),
        SamplingParams(temperature=0.8, seed=5, max_tokens=16, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=1, ignore_eos=True),
        SamplingParams(temperature=0, repetition_penalty=1.3, max_tokens=18, ignore_eos=True),
        greedy,
        SamplingParams(temperature=0, max_tokens=20, stop_token_ids=(stop_token_id,)),
        SamplingParams(temperature=0, max_tokens=7, ignore_eos=True, logprobs=2),
    ]


def test_async_engine_gives_the_tokens_of_the_sync_engine():
    sync_llm = _llm(async_scheduling=False)
    probe = sync_llm.generate(_prompts()[1], SamplingParams(temperature=0, max_tokens=20,
                                                            ignore_eos=True))[0]
    stop_token_id = probe.token_ids[5]  # request 1 stops early, mid-stream
    expected = sync_llm.generate(_prompts(), _params(stop_token_id))
    async_llm = _llm(async_scheduling=True)
    assert async_llm.engine.async_scheduling and not sync_llm.engine.async_scheduling
    got = async_llm.generate(_prompts(), _params(stop_token_id))
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in expected]
    assert [c.logprobs for c in got] == [c.logprobs for c in expected]
    assert got[1].finish_reason == "stop" and len(got[1].token_ids) <= 6
    assert async_llm.engine.stats().num_preemptions > 0
    assert async_llm.engine.scheduler.stats.num_free_blocks == async_llm.engine.info.num_kv_blocks
    assert async_llm.engine.runner.num_tracked_requests <= 4


def test_async_engine_reports_a_step_one_step_later_and_drains_at_the_end():
    llm = _llm(async_scheduling=True)
    llm.engine.add_request("a", [5, 6, 7], SamplingParams(temperature=0, max_tokens=3,
                                                          ignore_eos=True))
    per_step = []
    while llm.engine.has_unfinished():
        per_step.append([o.new_token_ids for o in llm.engine.step()])
    # step 1 prefills (nothing read back yet); steps 2, 3 decode while reading 1, 2;
    # step 4 has nothing to schedule (3 tokens in flight or back) and drains step 3
    assert per_step[0] == [] and [len(s) for s in per_step[1:]] == [1, 1, 1]


def test_unseeded_temperature_sampling_runs_ahead_and_gives_the_sync_engines_tokens():
    params = [SamplingParams(temperature=0.9, top_p=0.9, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.7, top_k=20, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)]
    prompts = _prompts()[:3]
    outputs = {}
    for async_scheduling in (False, True):
        llm = LLM("dummy:tiny", device="cpu", kv_cache_tokens=4096, seed=11,
                  async_scheduling=async_scheduling)
        host_samples = []  # the host path (which waits for the step in flight) is not taken
        llm.engine.runner.sampler.sample = lambda *args: host_samples.append(args)
        outputs[async_scheduling] = [c.token_ids for c in llm.generate(prompts, params)]
        assert host_samples == []
    assert outputs[True] == outputs[False]
    assert len(set(outputs[True][0])) > 1  # it did sample
