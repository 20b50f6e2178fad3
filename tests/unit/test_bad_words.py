"""Token bans in the sampler: bad_words sequences are never completed, min_tokens keeps the
stop tokens out until enough tokens are out, and rows without bans are left alone."""

from __future__ import annotations

import torch

from server.engine.step.bad_words import banned_token_ids
from server.engine.step.sampler import RequestSamplingState, Sampler
from server.scheduler.request import SamplingParams

VOCAB = 16


def _state(*, prompt: tuple[int, ...] = (1, 2), output: tuple[int, ...] = (),
           **params) -> RequestSamplingState:
    return RequestSamplingState(sampling_params=SamplingParams(**params),
                                prompt_token_ids=prompt, output_token_ids=list(output))


def _logits_favouring(*token_ids: int, rows: int = 1) -> torch.Tensor:
    """Each row prefers token_ids in the order given, by a wide margin."""
    logits = torch.zeros(rows, VOCAB)
    for rank, token_id in enumerate(token_ids):
        logits[:, token_id] = 10.0 - rank
    return logits


def test_a_one_token_bad_word_is_never_sampled():
    logits = _logits_favouring(5, 6)
    out = Sampler(device="cpu").sample(logits, [_state(temperature=0, bad_words=((5,),))])
    assert out.sampled_token_ids == (6,)


def test_the_last_token_of_a_sequence_is_banned_only_after_its_prefix():
    words = ((3, 4, 5),)
    assert banned_token_ids(bad_words=words, prompt_token_ids=(1,), output_token_ids=(3, 4)) \
        == {5}
    assert banned_token_ids(bad_words=words, prompt_token_ids=(1,), output_token_ids=(4,)) \
        == set()
    # the prefix may start in the prompt: the sequence cannot be completed across the join
    assert banned_token_ids(bad_words=words, prompt_token_ids=(9, 3), output_token_ids=(4,)) \
        == {5}
    assert banned_token_ids(bad_words=words, prompt_token_ids=(3, 4), output_token_ids=()) \
        == {5}


def test_min_tokens_bans_the_stop_tokens_until_enough_are_out():
    kwargs = dict(bad_words=(), prompt_token_ids=(1,), min_tokens=3, stop_token_ids=(2, 7))
    assert banned_token_ids(output_token_ids=(4, 4), **kwargs) == {2, 7}
    assert banned_token_ids(output_token_ids=(4, 4, 4), **kwargs) == set()


def test_rows_without_bans_in_a_mixed_batch_are_untouched():
    logits = _logits_favouring(5, 6, rows=3)
    states = [_state(temperature=0, bad_words=((9, 5),), output=(9,)),
              _state(temperature=0),
              _state(temperature=0, output=(9,))]
    out = Sampler(device="cpu").sample(logits, states)
    assert out.sampled_token_ids == (6, 5, 5)


def test_banned_tokens_carry_no_probability_in_random_rows_or_logprobs():
    logits = torch.zeros(4, VOCAB)  # uniform: every token is as likely
    states = [_state(temperature=1.0, bad_words=((t,) for t in range(VOCAB - 1)), logprobs=1)
              for _ in range(4)]
    out = Sampler(device="cpu", seed=3).sample(logits, states)
    assert out.sampled_token_ids == (VOCAB - 1,) * 4
    assert all(lp.logprob == 0.0 for lp in out.logprobs)


def test_the_input_logits_are_left_as_they_were():
    logits = _logits_favouring(5)
    before = logits.clone()
    Sampler(device="cpu").sample(logits, [_state(temperature=0, bad_words=((5,),))])
    assert torch.equal(logits, before)


def test_a_ban_outweighs_a_logit_bias_on_the_same_token():
    """logit_bias is applied before the bans: +100 cannot bring a banned token back."""
    logits = _logits_favouring(6, 7)
    state = _state(temperature=0, bad_words=((5,),), logit_bias=((5, 100.0),))
    out = Sampler(device="cpu").sample(logits, [state])
    assert out.sampled_token_ids == (6,)
