"""logit_bias on the default model, through the whole engine (scheduler, runner, sampler):
the runner's plain-greedy argmax, its on-device sampling and its full host path must each
add a row's biases, and only that row's."""

from __future__ import annotations

import pytest

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams
from tests.golden.helpers import single_torch_thread

PROMPT = "The capital of France is"
NUM_TOKENS = 6


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async"])
def llm(request, converted_default_model) -> LLM:
    with single_torch_thread():
        yield LLM(str(converted_default_model), device="cpu", kv_cache_tokens=2048,
                  async_scheduling=request.param)


def greedy(**extra) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, **extra)


@pytest.fixture(scope="module")
def unbiased(llm) -> tuple[int, ...]:
    return llm.generate(PROMPT, greedy())[0].token_ids


def forced_token(llm: LLM, unbiased: tuple[int, ...]) -> int:
    """An ordinary word the model would not write here."""
    token_id = llm.tokenizer.encode(" banana", add_special_tokens=False)[0]
    assert token_id not in unbiased
    return token_id


def test_plus_100_on_one_token_makes_greedy_decoding_emit_it(llm, unbiased):
    token_id = forced_token(llm, unbiased)
    out = llm.generate(PROMPT, greedy(logit_bias=((token_id, 100.0),)))[0]
    assert out.token_ids == (token_id,) * NUM_TOKENS


def test_minus_100_on_the_greedy_token_changes_it(llm, unbiased):
    out = llm.generate(PROMPT, greedy(logit_bias=((unbiased[0], -100.0),)))[0]
    assert out.token_ids[0] != unbiased[0]
    assert unbiased[0] not in out.token_ids


def test_a_batch_biases_only_its_rows_that_ask(llm, unbiased):
    token_id = forced_token(llm, unbiased)
    bias = ((token_id, 100.0),)
    params = [greedy(), greedy(logit_bias=bias), greedy(),
              SamplingParams(temperature=0.9, max_tokens=NUM_TOKENS, ignore_eos=True,
                             logit_bias=bias)]
    outs = llm.generate([PROMPT] * len(params), params)
    assert [o.token_ids for o in outs] == [unbiased, (token_id,) * NUM_TOKENS, unbiased,
                                           (token_id,) * NUM_TOKENS]


def test_rows_on_the_host_path_get_their_biases_too(llm, unbiased):
    """logprobs (and penalties) send the step through the sampler's host path; its
    logprobs report the biased distribution."""
    token_id = forced_token(llm, unbiased)
    params = [greedy(logprobs=1), greedy(logit_bias=((token_id, 100.0),), logprobs=1),
              greedy(logit_bias=((token_id, 100.0),), repetition_penalty=1.1)]
    outs = llm.generate([PROMPT] * len(params), params)
    assert outs[0].token_ids == unbiased
    assert outs[1].token_ids == (token_id,) * NUM_TOKENS
    assert outs[2].token_ids == (token_id,) * NUM_TOKENS
    assert all(lp.logprob > -1e-3 for lp in outs[1].logprobs)  # all but certain
