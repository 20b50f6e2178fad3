"""logit_bias on the GPU path: decode steps replayed from CUDA graphs (the bias is added to
a copy of the graph's output), with sync and async scheduling, in batches that mix rows with
and without biases across the runner's three sampling paths (plain-greedy argmax, device
sampling, host sampling for logprobs)."""

from __future__ import annotations

import pytest

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams

KV_TOKENS = 16384
NUM_TOKENS = 12
PROMPTS = [[7 + i] * (5 + 23 * i) for i in range(5)]
FORCED = 1234  # an ordinary token id of the smollm2 vocabulary


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async"])
def llm(request) -> LLM:
    llm = LLM("dummy:smollm2-135m", device="cuda", kv_cache_tokens=KV_TOKENS, max_num_seqs=8,
              async_scheduling=request.param)
    assert llm.engine.runner.graphs is not None
    return llm


def greedy(**extra) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, **extra)


@pytest.fixture(scope="module")
def unbiased(llm) -> list[tuple[int, ...]]:
    return [c.token_ids for c in llm.generate(PROMPTS, greedy())]


def test_plus_100_makes_every_replayed_decode_step_emit_the_token(llm, unbiased):
    replays = llm.engine.runner.graphs.num_replays
    outs = llm.generate(PROMPTS, greedy(logit_bias=((FORCED, 100.0),)))
    assert [o.token_ids for o in outs] == [(FORCED,) * NUM_TOKENS] * len(PROMPTS)
    assert llm.engine.runner.graphs.num_replays - replays >= NUM_TOKENS - 1


def test_minus_100_on_the_greedy_token_changes_it_under_graphs(llm, unbiased):
    params = [greedy(logit_bias=((tokens[0], -100.0),)) for tokens in unbiased]
    outs = llm.generate(PROMPTS, params)
    for out, tokens in zip(outs, unbiased):
        assert out.token_ids[0] != tokens[0] and tokens[0] not in out.token_ids


def test_a_replayed_batch_biases_only_the_rows_that_ask(llm, unbiased):
    bias = ((FORCED, 100.0),)
    params = [greedy(), greedy(logit_bias=bias), greedy(),
              SamplingParams(temperature=0.8, max_tokens=NUM_TOKENS, ignore_eos=True,
                             logit_bias=bias),
              greedy()]
    outs = llm.generate(PROMPTS, params)
    assert [o.token_ids for o in outs] == [unbiased[0], (FORCED,) * NUM_TOKENS, unbiased[2],
                                           (FORCED,) * NUM_TOKENS, unbiased[4]]


def test_host_path_rows_get_their_biases_beside_graph_rows(llm, unbiased):
    bias = ((FORCED, 100.0),)
    params = [greedy(logprobs=2), greedy(logit_bias=bias, logprobs=0),
              greedy(logit_bias=bias, seed=3), greedy(repetition_penalty=1.2), greedy()]
    outs = llm.generate(PROMPTS, params)
    assert outs[0].token_ids == unbiased[0] and outs[4].token_ids == unbiased[4]
    assert outs[1].token_ids == outs[2].token_ids == (FORCED,) * NUM_TOKENS
    assert all(lp.logprob > -1e-2 for lp in outs[1].logprobs)
