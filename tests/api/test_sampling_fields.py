"""The Chat / Completions fields that change sampling beyond temperature: logit_bias,
best_of > n and suffix, on the real daemon (default model)."""

from __future__ import annotations

import pytest

from tests.api.openai_schema import assert_matches


def token_id(http, text: str) -> int:
    (only,) = http.post("/tokenize", json={"prompt": text,
                                           "add_special_tokens": False}).json()["tokens"]
    return only


def test_plus_100_logit_bias_makes_greedy_chat_write_that_token(client, http, model_name):
    banana = token_id(http, " banana")
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "What is 2 + 2?"}],
        max_tokens=3, temperature=0, logit_bias={str(banana): 100})
    assert completion.choices[0].message.content == " banana" * 3


def test_minus_100_logit_bias_on_the_greedy_token_changes_it(client, http, model_name):
    def first_token(**fields) -> str:
        return client.completions.create(model=model_name, prompt="The capital of France is",
                                         max_tokens=1, temperature=0, **fields).choices[0].text

    greedy = first_token()
    banned = first_token(logit_bias={str(token_id(http, greedy)): -100})
    assert banned != greedy


@pytest.mark.parametrize("logit_bias,why", [
    ({"50": 100.5}, "[-100, 100]"),
    ({"abc": 1}, "token ids"),
    ({"-3": 1}, "token ids"),
    ({"999999": 1}, "outside the vocabulary"),
    ({str(i): 1 for i in range(301)}, "at most 300"),
])
def test_logit_bias_out_of_bounds_is_a_400_naming_it(http, logit_bias, why):
    for path, body in (("/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "Hi"}]}),
                       ("/v1/completions", {"prompt": "Hi"})):
        response = http.post(path, json={**body, "logit_bias": logit_bias, "max_tokens": 1})
        assert response.status_code == 400, response.text
        assert_matches(response.json(), "ErrorResponse")
        assert response.json()["error"]["param"] == "logit_bias"
        assert why in response.json()["error"]["message"]


def cumulative_logprob(choice) -> float:
    return sum(choice.logprobs.token_logprobs)


def test_best_of_returns_the_n_samples_with_the_highest_cumulative_logprob(client, model_name):
    request = dict(model=model_name, prompt="Once upon a time", max_tokens=6, temperature=1.0,
                   seed=11, logprobs=0, extra_body={"ignore_eos": True})
    every = client.completions.create(n=4, **request)  # choice j samples with seed + j
    best = client.completions.create(n=2, best_of=4, **request)
    ranked = sorted(every.choices, key=cumulative_logprob, reverse=True)[:2]
    assert [c.text for c in best.choices] == [c.text for c in ranked]
    assert [c.index for c in best.choices] == [0, 1]
    assert best.usage.completion_tokens == 4 * 6  # every sample's tokens count


def test_best_of_without_logprobs_returns_none_and_keeps_usage(client, model_name):
    best = client.completions.create(model=model_name, prompt="Once upon a time",
                                     max_tokens=4, n=1, best_of=3, temperature=1.0,
                                     extra_body={"ignore_eos": True})
    assert len(best.choices) == 1 and best.choices[0].logprobs is None
    assert best.usage.completion_tokens == 3 * 4


@pytest.mark.parametrize("fields", [{"best_of": 1, "n": 2},
                                    {"best_of": 3, "n": 1, "stream": True},
                                    {"best_of": 21}])
def test_best_of_that_cannot_be_served_is_a_400(http, fields):
    response = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1, **fields})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "best_of"


def test_suffix_without_fill_in_the_middle_tokens_is_a_400_saying_why(http):
    response = http.post("/v1/completions",
                         json={"prompt": "def add(a, b):", "suffix": "    return c",
                               "max_tokens": 8})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "suffix" and "fill-in-the-middle" in error["message"]
