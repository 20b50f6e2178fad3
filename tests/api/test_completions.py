"""POST /v1/completions on the real daemon: prompt forms, echo, logprobs, streaming."""

from __future__ import annotations

import pytest

from tests.api.helpers import finish_reasons, stream_events, streamed_texts
from tests.api.openai_schema import assert_matches

PROMPT = "The capital of France is"


def complete(http, **fields) -> dict:
    response = http.post("/v1/completions", json=fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches(body, "CreateCompletionResponse")
    return body


def test_completion_matches_openai_schema_and_continues_the_prompt(http, model_name):
    body = complete(http, model=model_name, prompt=PROMPT, max_tokens=4, temperature=0)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert "Paris" in body["choices"][0]["text"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_token_id_prompt_gives_the_same_text_as_the_string(http, model_name):
    token_ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_text = complete(http, model=model_name, prompt=PROMPT, max_tokens=6, temperature=0)
    by_ids = complete(http, model=model_name, prompt=token_ids, max_tokens=6, temperature=0)
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert by_ids["usage"]["prompt_tokens"] == len(token_ids)


def test_several_prompts_each_get_n_choices_numbered_in_order(http, model_name):
    counting = http.post("/tokenize", json={"prompt": "One, two,"}).json()["tokens"]
    capital = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    body = complete(http, model=model_name, prompt=[counting, capital], n=2, max_tokens=3,
                    temperature=0, ignore_eos=True)
    choices = sorted(body["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    # Greedy: both choices of a prompt agree; the two prompts differ.
    assert choices[0]["text"] == choices[1]["text"]
    assert choices[2]["text"] == choices[3]["text"]
    assert choices[0]["text"] != choices[2]["text"]
    assert body["usage"]["completion_tokens"] == 4 * 3


def test_list_of_string_prompts(http, model_name):
    body = complete(http, model=model_name, prompt=[PROMPT, "1, 2, 3,"], max_tokens=3,
                    temperature=0)
    assert sorted(c["index"] for c in body["choices"]) == [0, 1]


def test_echo_puts_the_prompt_before_the_completion(http, model_name):
    plain = complete(http, model=model_name, prompt=PROMPT, max_tokens=3, temperature=0)
    echoed = complete(http, model=model_name, prompt=PROMPT, max_tokens=3, temperature=0,
                      echo=True)
    assert echoed["choices"][0]["text"] == PROMPT + plain["choices"][0]["text"]
    events = stream_events(http, "/v1/completions", {"model": model_name, "prompt": PROMPT,
                                                      "max_tokens": 3, "temperature": 0,
                                                      "echo": True})
    assert streamed_texts(events) == {0: echoed["choices"][0]["text"]}


def test_completion_logprobs_line_up_with_the_text(http, model_name):
    body = complete(http, model=model_name, prompt=PROMPT, max_tokens=5, temperature=0,
                    logprobs=2, ignore_eos=True)
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 5
    assert len(logprobs["top_logprobs"]) == len(logprobs["text_offset"]) == 5
    assert all(len(top) <= 2 and max(top.values()) <= 0 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    assert logprobs["text_offset"][0] == 0
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"]):
        assert choice["text"][offset:offset + len(token)] == token


def test_streamed_greedy_completion_equals_the_non_streamed_one(http, model_name):
    request = {"model": model_name, "prompt": "Once upon a time", "max_tokens": 12,
               "temperature": 0}
    whole = complete(http, **request)
    events = stream_events(http, "/v1/completions", request)
    assert streamed_texts(events) == {0: whole["choices"][0]["text"]}
    assert finish_reasons(events) == {0: whole["choices"][0]["finish_reason"]}
    assert all("usage" not in event for event in events)


def test_completions_stream_include_usage(http, model_name):
    events = stream_events(http, "/v1/completions",
                           {"model": model_name, "prompt": PROMPT, "max_tokens": 3,
                            "temperature": 0, "stream_options": {"include_usage": True}})
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 3
    assert all(event["usage"] is None for event in events[:-1])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_stats_puts_the_running_usage_on_every_chunk(http, model_name, path):
    prompt = ({"prompt": PROMPT} if path == "/v1/completions"
              else {"messages": [{"role": "user", "content": PROMPT}]})
    events = stream_events(http, path, {
        "model": model_name, **prompt, "max_tokens": 5, "temperature": 0, "ignore_eos": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    usages = [event["usage"] for event in events]
    assert all(usage is not None for usage in usages)
    running = [usage["completion_tokens"] for usage in usages]
    assert running == sorted(running) and running[-1] == 5
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in usages)
    assert events[-1]["choices"] == []  # the whole usage still comes last, on its own
    # without include_usage it is ignored, as in vLLM: no chunk has the key
    events = stream_events(http, path, {**prompt, "model": model_name, "max_tokens": 2,
                                        "stream_options": {"continuous_usage_stats": True}})
    assert all("usage" not in event for event in events)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_reports_cached_tokens_only_once_the_engine_knows_them(
        http, model_name, path):
    prompt = " ".join(["The capital of France is Paris."] * 12)  # several blocks' worth
    prompt = ({"prompt": prompt} if path == "/v1/completions"
              else {"messages": [{"role": "user", "content": prompt}]})
    body = {"model": model_name, **prompt, "max_tokens": 3, "temperature": 0}
    http.post(path, json=body).raise_for_status()  # its blocks are in the prefix cache now
    events = stream_events(http, path, {**body, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}})
    final = events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert final > 0
    # never a 0 first (the role chunk goes out before the engine schedules the request)
    assert {event["usage"]["prompt_tokens_details"]["cached_tokens"] for event in events
            if "prompt_tokens_details" in event["usage"]} == {final}


def test_ignore_eos_generates_exactly_max_tokens(http, model_name):
    body = complete(http, model=model_name, prompt="Hi", max_tokens=7, temperature=0,
                    ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 7
    assert body["choices"][0]["finish_reason"] == "length"


def test_streamed_chinese_and_emoji_arrive_whole(http, model_name):
    for prompt in ("中文：你好。English: hello. 中文：谢谢。English:",
                   "Emoji list: 🎉 party, 🐱 cat, 🐶"):
        request = {"model": model_name, "prompt": prompt, "max_tokens": 12, "temperature": 0,
                   "ignore_eos": True, "logprobs": 0}
        whole = complete(http, **request)["choices"][0]
        # The tokens' own bytes make up exactly the text: nothing lost, nothing mangled.
        raw = b"".join(bytes(t[len("bytes:"):], "ascii").decode("unicode_escape")
                       .encode("latin-1") if t.startswith("bytes:") else t.encode()
                       for t in whole["logprobs"]["tokens"])
        assert raw.decode("utf-8") == whole["text"]
        assert any(ord(ch) > 0x2000 for ch in whole["text"])  # multi-byte text came out
        events = stream_events(http, "/v1/completions", request)
        pieces = [c["text"] for e in events for c in e["choices"]]
        assert all("\ufffd" not in piece for piece in pieces)
        assert "".join(pieces) == whole["text"]
