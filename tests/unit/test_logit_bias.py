"""logit_bias in the sampler: added to the named tokens of the rows that ask, on the same
logits the penalties adjust (so logprobs report it), and checked where it is made."""

from __future__ import annotations

import pytest
import torch

from server.engine.step.logit_bias import LogitBiasTensors, apply_logit_bias
from server.engine.step.sampler import RequestSamplingState, Sampler
from server.scheduler.request import SamplingParams, SamplingParamsError

VOCAB = 16


def state(**params) -> RequestSamplingState:
    return RequestSamplingState(sampling_params=SamplingParams(**params),
                                prompt_token_ids=(1, 2))


def test_biases_land_on_their_rows_and_tokens_only():
    logits = torch.zeros(3, VOCAB)
    bias = LogitBiasTensors.build([((4, 2.5), (7, -1.0)), (), ((4, 100.0),)], device="cpu")
    biased = apply_logit_bias(logits, bias)
    expected = torch.zeros(3, VOCAB)
    expected[0, 4], expected[0, 7], expected[2, 4] = 2.5, -1.0, 100.0
    assert torch.equal(biased, expected)
    assert torch.equal(logits, torch.zeros(3, VOCAB))  # the input is left as it was


def test_a_batch_without_biases_builds_nothing():
    assert LogitBiasTensors.build([(), ()], device="cpu") is None


def test_the_sampler_biases_greedy_and_random_rows_that_ask_and_reports_the_biased_logprobs():
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    plain = logits.argmax(dim=-1).tolist()
    forced = (plain[0] + 1) % VOCAB
    states = [state(temperature=0, logit_bias=((forced, 100.0),), logprobs=0),
              state(temperature=0), state(temperature=1.0, logit_bias=((forced, 100.0),)),
              state(temperature=0, logit_bias=((plain[3], -100.0),))]
    out = Sampler(device="cpu").sample(logits, states)
    assert out.sampled_token_ids[:3] == (forced, plain[1], forced)
    assert out.sampled_token_ids[3] != plain[3]
    assert out.logprobs[0].logprob > -1e-3


@pytest.mark.parametrize("logit_bias,message", [
    (((1, 100.5),), "[-100, 100]"),
    (((1, float("nan")),), "[-100, 100]"),
    (((-1, 1.0),), ">= 0"),
    (((1, 1.0), (1, 2.0)), "twice"),
    (tuple((i, 1.0) for i in range(301)), "at most 300"),
])
def test_sampling_params_refuse_a_logit_bias_out_of_bounds(logit_bias, message):
    with pytest.raises(SamplingParamsError) as error:
        SamplingParams(logit_bias=logit_bias)
    assert error.value.param == "logit_bias" and message in str(error.value)
