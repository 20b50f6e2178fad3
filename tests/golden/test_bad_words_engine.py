"""bad_words through the whole engine (scheduler, async runner, preemption): a banned
sequence never appears in the output, also when its tokens come from different steps or
the prompt, and requests without bans in the same batches get their own tokens."""

from __future__ import annotations

import pytest

from server.scheduler.request import SamplingParams
from tests.golden.helpers import single_torch_thread, tiny_llm_that_preempts


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def llm():
    return tiny_llm_that_preempts(async_scheduling=True)


PROMPTS = [[7 + i, 100 + 3 * i, 41, 9] * (2 + i % 3) for i in range(6)]


def _greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, **kwargs)


def _contains(tokens, word: tuple[int, ...]) -> bool:
    size = len(word)
    return any(tuple(tokens[i:i + size]) == word for i in range(len(tokens) - size + 1))


def test_a_banned_pair_never_appears_and_unbanned_requests_keep_their_tokens(llm):
    free = llm.generate(PROMPTS, _greedy())
    tokens = free[0].token_ids
    pair = (tokens[3], tokens[4])  # generated in two different steps
    params = [_greedy(bad_words=(pair,)) if i % 2 == 0 else _greedy()
              for i in range(len(PROMPTS))]
    banned = llm.generate(PROMPTS, params)
    assert banned[0].token_ids != tokens
    for i, completion in enumerate(banned):
        if i % 2 == 0:
            assert not _contains(completion.token_ids, pair), i
        else:  # the same batches, no ban: exactly the free run's tokens
            assert completion.token_ids == free[i].token_ids, i


def test_a_banned_sequence_cannot_be_completed_across_the_prompt(llm):
    prompt = PROMPTS[1]
    first = llm.generate([prompt], _greedy())[0].token_ids[0]
    word = (prompt[-1], first)
    got = llm.generate([prompt], _greedy(bad_words=(word,)))[0].token_ids
    assert got[0] != first
    assert not _contains([prompt[-1], *got], word)


def test_a_longer_banned_sequence_is_cut_at_its_last_token(llm):
    tokens = llm.generate([PROMPTS[2]], _greedy())[0].token_ids
    word = tuple(tokens[5:9])
    got = llm.generate([PROMPTS[2]], _greedy(bad_words=(word,)))[0].token_ids
    assert got[:8] == tokens[:8]
    assert got[8] != tokens[8]
    assert not _contains(got, word)


def test_min_tokens_holds_back_a_stop_token(llm):
    tokens = llm.generate([PROMPTS[3]], _greedy())[0].token_ids
    stop = tokens[0]
    early = llm.generate([PROMPTS[3]], SamplingParams(
        temperature=0, max_tokens=24, stop_token_ids=(stop,)))[0]
    assert early.finish_reason == "stop" and len(early.token_ids) == 1
    held = llm.generate([PROMPTS[3]], SamplingParams(
        temperature=0, max_tokens=24, stop_token_ids=(stop,), min_tokens=6))[0]
    assert len(held.token_ids) >= 6
    assert stop not in held.token_ids[:5]



def test_min_tokens_requests_carry_the_model_end_tokens_as_stop_tokens(llm):
    """So that the sampler's min_tokens ban covers the end token the scheduler stops on."""
    from server.engine.core import _with_extra_eos

    info = llm.engine.info
    params = _with_extra_eos(SamplingParams(min_tokens=3), info)
    assert set(info.eos_token_ids) <= set(params.stop_token_ids)
    assert _with_extra_eos(SamplingParams(min_tokens=3, ignore_eos=True), info).stop_token_ids \
        == ()
