"""Stop strings on the real daemon: found across token boundaries, never in the output,
streamed or not, and the request finishes with "stop" as soon as one matches."""

from __future__ import annotations

import pytest

from tests.api.helpers import chat_body, finish_reasons, stream_events, streamed_texts

PROMPT = "List the days of the week, separated by commas:"


@pytest.fixture(scope="module")
def baseline(http, model_name) -> str:
    """The greedy text with no stop string."""
    body = {"model": model_name, "prompt": PROMPT, "max_tokens": 24, "temperature": 0,
            "ignore_eos": True}
    return http.post("/v1/completions", json=body).json()["choices"][0]["text"]


def stop_inside(text: str) -> tuple[str, int]:
    """A stop string spanning the boundary of two words in the middle of `text`."""
    middle = len(text) // 2
    space = text.index(" ", middle) if " " in text[middle:] else text.index(" ")
    stop = text[space - 2:space + 3]  # "ay, T" across a token boundary
    return stop, text.index(stop)


def test_stop_string_cuts_the_text_before_it(http, model_name, baseline):
    stop, at = stop_inside(baseline)
    body = http.post("/v1/completions", json={
        "model": model_name, "prompt": PROMPT, "max_tokens": 24, "temperature": 0,
        "ignore_eos": True, "stop": [stop]}).json()
    choice = body["choices"][0]
    assert choice["text"] == baseline[:at]
    assert choice["finish_reason"] == "stop"
    assert stop not in choice["text"]


def test_streamed_stop_string_never_leaks_into_a_chunk(http, model_name, baseline):
    stop, at = stop_inside(baseline)
    events = stream_events(http, "/v1/completions", {
        "model": model_name, "prompt": PROMPT, "max_tokens": 24, "temperature": 0,
        "ignore_eos": True, "stop": stop})
    assert streamed_texts(events) == {0: baseline[:at]}
    assert finish_reasons(events) == {0: "stop"}
    for event in events:
        for choice in event["choices"]:
            assert stop not in choice["text"]


def test_stop_string_ends_the_engine_request_early(daemon, http, model_name, baseline):
    stop, _ = stop_inside(baseline)
    before = daemon.engine_stats()["generation_tokens_total"]
    body = http.post("/v1/completions", json={
        "model": model_name, "prompt": PROMPT, "max_tokens": 200, "temperature": 0,
        "ignore_eos": True, "stop": [stop]}).json()
    generated = daemon.engine_stats()["generation_tokens_total"] - before
    assert body["choices"][0]["finish_reason"] == "stop"
    assert generated < 30  # aborted right after the match, not run to 200 tokens
    assert body["usage"]["completion_tokens"] <= generated


def test_earliest_of_several_stop_strings_wins_in_chat(http, model_name):
    request = chat_body("Count from one to ten in words, separated by commas.",
                        model=model_name, max_tokens=30, temperature=0)
    full = http.post("/v1/chat/completions", json=request).json()["choices"][0]
    text = full["message"]["content"]
    first, later = text[len(text) // 3:len(text) // 3 + 3], text[-4:]
    expected = text[:min(text.index(first), text.index(later))]
    whole = http.post("/v1/chat/completions",
                      json={**request, "stop": [later, first]}).json()["choices"][0]
    assert whole["message"]["content"] == expected
    assert whole["finish_reason"] == "stop"
    events = stream_events(http, "/v1/chat/completions", {**request, "stop": [later, first]})
    assert streamed_texts(events) == {0: expected}
