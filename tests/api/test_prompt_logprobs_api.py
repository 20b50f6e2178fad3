"""Prompt logprobs through the real daemon: /v1/completions with echo + logprobs (the prompt
tokens' logprobs first, the first null, as OpenAI's legacy completions and lm-eval's
local-completions model read them; max_tokens 0 scores the prompt alone), vLLM's
prompt_logprobs field on completions and chat, streaming, and their errors."""

from __future__ import annotations

import pytest

from tests.api.helpers import chat_body, stream_events, streamed_texts
from tests.api.openai_schema import ECHO_COMPLETION, ECHO_COMPLETION_CHUNK, assert_matches

PROMPT = "The capital of France is Paris, and the capital of Italy is Rome."


def complete(http, schema: str = ECHO_COMPLETION, **fields) -> dict:
    response = http.post("/v1/completions", json=fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches(body, schema)
    return body


def tokenize(http, text: str) -> list[int]:
    return http.post("/tokenize", json={"prompt": text}).json()["tokens"]


def assert_lines_up(choice: dict) -> None:
    """Each token's text sits at its offset in the choice's text, in order."""
    logprobs = choice["logprobs"]
    sizes = {len(logprobs[key]) for key in ("tokens", "token_logprobs", "top_logprobs",
                                            "text_offset")}
    assert len(sizes) == 1
    assert "".join(logprobs["tokens"]) == choice["text"]
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"]):
        assert choice["text"][offset:offset + len(token)] == token


def test_echo_logprobs_with_max_tokens_0_score_each_prompt_as_lm_eval_asks(http, model_name):
    """lm-eval's loglikelihood request: token-id prompts, echo, logprobs 1, max_tokens 0."""
    prompts = [tokenize(http, PROMPT), tokenize(http, "One, two, three, four")]
    body = complete(http, model=model_name, prompt=prompts, echo=True, logprobs=1,
                    max_tokens=0, temperature=0)
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == sum(map(len, prompts))
    for prompt, choice in zip(prompts, sorted(body["choices"], key=lambda c: c["index"])):
        logprobs = choice["logprobs"]
        assert choice["finish_reason"] == "length"
        assert len(logprobs["tokens"]) == len(prompt)
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        assert all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
        assert all(len(top) == 1 for top in logprobs["top_logprobs"][1:])
        # the top alternative is never less likely than the prompt's own token
        assert all(max(top.values()) >= lp - 1e-6 for top, lp in
                   zip(logprobs["top_logprobs"][1:], logprobs["token_logprobs"][1:]))
        assert_lines_up(choice)
    assert " Paris" in body["choices"][0]["logprobs"]["tokens"]


def test_echoed_prompt_logprobs_lead_and_the_generated_ones_follow(http, model_name):
    scored = complete(http, model=model_name, prompt=PROMPT, echo=True, logprobs=2,
                      max_tokens=0)["choices"][0]["logprobs"]
    plain = complete(http, model=model_name, prompt=PROMPT, logprobs=2, max_tokens=4,
                     temperature=0, ignore_eos=True)["choices"][0]
    both = complete(http, model=model_name, prompt=PROMPT, echo=True, logprobs=2,
                    max_tokens=4, temperature=0, ignore_eos=True)["choices"][0]
    assert both["text"] == PROMPT + plain["text"]
    assert_lines_up(both)
    num_prompt = len(scored["tokens"])
    echoed = both["logprobs"]
    assert echoed["tokens"] == scored["tokens"] + plain["logprobs"]["tokens"]
    assert echoed["text_offset"] == scored["text_offset"] + [
        len(PROMPT) + offset for offset in plain["logprobs"]["text_offset"]]
    assert echoed["token_logprobs"][1:num_prompt] == pytest.approx(
        scored["token_logprobs"][1:], abs=1e-4)
    assert echoed["token_logprobs"][num_prompt:] == pytest.approx(
        plain["logprobs"]["token_logprobs"], abs=1e-4)


def test_prompt_logprobs_of_text_with_multi_byte_characters_keep_offsets_in_order(
        http, model_name):
    text = "中文：你好。Emoji: 🎉 party"
    choice = complete(http, model=model_name, prompt=text, echo=True, logprobs=0,
                      max_tokens=0)["choices"][0]
    offsets = choice["logprobs"]["text_offset"]
    assert choice["text"] == text
    assert offsets == sorted(offsets) and offsets[0] == 0 and offsets[-1] < len(text)
    assert len(choice["logprobs"]["tokens"]) == len(tokenize(http, text))


def test_openai_sdk_reads_the_echoed_prompt_logprobs(client, model_name):
    completion = client.completions.create(model=model_name, prompt=PROMPT, echo=True,
                                           logprobs=1, max_tokens=0)
    logprobs = completion.choices[0].logprobs
    assert completion.choices[0].text == PROMPT
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(isinstance(lp, float) for lp in logprobs.token_logprobs[1:])


def test_streamed_echo_with_logprobs_equals_the_whole_answer(http, model_name):
    request = {"model": model_name, "prompt": PROMPT, "echo": True, "logprobs": 1,
               "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    whole = complete(http, **request)["choices"][0]
    events = stream_events(http, "/v1/completions", request, schema=ECHO_COMPLETION_CHUNK)
    assert streamed_texts(events) == {0: whole["text"]}
    first = events[0]["choices"][0]
    assert first["text"].startswith(PROMPT) and first["logprobs"]["token_logprobs"][0] is None
    joined = {key: [v for e in events for v in e["choices"][0]["logprobs"][key]]
              for key in ("tokens", "text_offset")}
    assert joined == {key: whole["logprobs"][key] for key in joined}


def test_each_of_n_choices_echoes_the_same_prompt_logprobs(http, model_name):
    body = complete(http, model=model_name, prompt=PROMPT, echo=True, logprobs=1, n=2,
                    max_tokens=2, temperature=1.0, seed=7)
    first, second = (c["logprobs"] for c in sorted(body["choices"], key=lambda c: c["index"]))
    num_prompt = len(tokenize(http, PROMPT))
    assert first["tokens"][:num_prompt] == second["tokens"][:num_prompt]
    assert first["token_logprobs"][1:num_prompt] == pytest.approx(
        second["token_logprobs"][1:num_prompt], abs=1e-4)


def test_prompt_logprobs_field_comes_in_vllms_shape(http, model_name):
    echoed = complete(http, model=model_name, prompt=PROMPT, echo=True, logprobs=3,
                      max_tokens=0)["choices"][0]["logprobs"]
    choice = complete(http, schema="CreateCompletionResponse", model=model_name,
                      prompt=PROMPT, prompt_logprobs=3, max_tokens=1,
                      temperature=0)["choices"][0]
    token_ids = tokenize(http, PROMPT)
    prompt_logprobs = choice["prompt_logprobs"]
    assert choice["logprobs"] is None and len(prompt_logprobs) == len(token_ids)
    assert prompt_logprobs[0] is None
    for index, entry in enumerate(prompt_logprobs[1:], start=1):
        own = entry[str(token_ids[index])]
        assert own["decoded_token"] == echoed["tokens"][index]
        assert own["logprob"] == pytest.approx(echoed["token_logprobs"][index], abs=1e-4)
        ranks = sorted(e["rank"] for e in entry.values())
        assert len(entry) in (3, 4) and ranks[:3] == [1, 2, 3]
        assert own["rank"] >= 1 and (own["rank"] <= 3) == (len(entry) == 3)


def test_chat_prompt_logprobs_cover_the_templated_prompt(http, model_name):
    response = http.post("/v1/chat/completions", json=chat_body(
        "Name a colour.", model=model_name, max_tokens=2, prompt_logprobs=0))
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches(body, "CreateChatCompletionResponse")
    prompt_logprobs = body["prompt_logprobs"]
    assert len(prompt_logprobs) == body["usage"]["prompt_tokens"]
    assert prompt_logprobs[0] is None
    assert all(len(entry) == 1 and next(iter(entry.values()))["rank"] >= 1
               for entry in prompt_logprobs[1:])
    plain = http.post("/v1/chat/completions", json=chat_body("Hi", max_tokens=1)).json()
    assert "prompt_logprobs" not in plain
