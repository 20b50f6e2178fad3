"""Bad input gets a 4xx in OpenAI's error shape, never a 500, and the daemon stays healthy."""

from __future__ import annotations

import openai
import pytest

from tests.api.openai_schema import assert_matches

USER = [{"role": "user", "content": "hi"}]
VOCAB_SIZE = 49152  # SmolLM2's
BIG = 10**6

CHAT_CASES = [
    ("n_zero", {"messages": USER, "n": 0}, 400, "n"),
    ("n_above_cap", {"messages": USER, "n": 1000}, 400, "n"),
    ("negative_temperature", {"messages": USER, "temperature": -0.5}, 400, "temperature"),
    ("infinite_temperature", b'{"messages": [{"role": "user", "content": "hi"}], '
                             b'"temperature": Infinity}', 400, None),
    ("nan_temperature", b'{"messages": [{"role": "user", "content": "hi"}], '
                        b'"temperature": NaN}', 400, None),
    ("top_p_zero", {"messages": USER, "top_p": 0}, 400, "top_p"),
    ("top_p_above_one", {"messages": USER, "top_p": 1.5}, 400, "top_p"),
    ("top_logprobs_above_20", {"messages": USER, "logprobs": True, "top_logprobs": 21},
     400, "top_logprobs"),
    ("empty_messages", {"messages": []}, 400, "messages"),
    ("missing_messages", {"max_tokens": 3}, 400, "messages"),
    ("unknown_role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages.0.role"),
    ("image_part", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "messages.0.content.0"),
    ("temperature_as_string", {"messages": USER, "temperature": "hot"}, 400, "temperature"),
    ("max_tokens_as_float", {"messages": USER, "max_tokens": 2.5}, 400, "max_tokens"),
    ("n_as_bool", {"messages": USER, "n": True}, 400, "n"),
    ("messages_as_string", {"messages": "hi"}, 400, "messages"),
    ("stop_empty", {"messages": USER, "stop": [""]}, 400, "stop"),
    ("stop_as_number", {"messages": USER, "stop": 5}, 400, "stop"),
    ("stop_token_outside_vocab", {"messages": USER, "stop_token_ids": [VOCAB_SIZE]}, 400,
     "stop_token_ids"),
    ("zero_max_tokens", {"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ("prompt_logprobs_streamed", {"messages": USER, "prompt_logprobs": 0, "stream": True},
     400, "prompt_logprobs"),
    ("stream_options_without_stream", {"messages": USER,
                                       "stream_options": {"include_usage": True}},
     400, "stream_options"),
    ("context_length_exceeded", {"messages": USER, "max_tokens": BIG}, 400, "max_tokens"),
    ("malformed_json", b'{"messages": [', 400, None),
    ("json_array_body", b"[1, 2]", 400, None),
    ("empty_body", b"", 400, None),
    ("unknown_model", {"messages": USER, "model": "no-such-model"}, 404, "model"),
]

COMPLETION_CASES = [
    ("empty_prompt", {"prompt": ""}, 400, "prompt"),
    ("empty_prompt_list", {"prompt": []}, 400, "prompt"),
    ("empty_token_list", {"prompt": [[]]}, 400, "prompt"),
    ("token_id_outside_vocab", {"prompt": [1, 2, VOCAB_SIZE]}, 400, "prompt"),
    ("negative_token_id", {"prompt": [[5, -1]]}, 400, "prompt.0"),
    ("mixed_prompt_list", {"prompt": [1, "a"]}, 400, "prompt"),
    ("logprobs_above_20", {"prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ("prompt_logprobs_above_20", {"prompt": "hi", "prompt_logprobs": 21}, 400,
     "prompt_logprobs"),
    ("prompt_logprobs_streamed", {"prompt": "hi", "prompt_logprobs": 1, "stream": True}, 400,
     "prompt_logprobs"),
    ("zero_max_tokens_without_echo", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("negative_max_tokens", {"prompt": "hi", "echo": True, "max_tokens": -1}, 400,
     "max_tokens"),
    ("echo_logprobs_with_suffix", {"prompt": "hi", "echo": True, "logprobs": 1,
                                   "suffix": "!"}, 400, "suffix"),
    ("context_length_exceeded", {"prompt": "hi", "max_tokens": BIG}, 400, "max_tokens"),
    ("unknown_model", {"prompt": "hi", "model": "no-such-model"}, 404, "model"),
]


def check_error(response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert_matches(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def post(http, path: str, body):
    if isinstance(body, bytes):
        return http.post(path, content=body, headers={"Content-Type": "application/json"})
    return http.post(path, json=body)


@pytest.mark.parametrize("name,body,status,param", CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
def test_bad_chat_request_gets_an_openai_error(http, name, body, status, param):
    error = check_error(post(http, "/v1/chat/completions", body), status, param)
    if name == "context_length_exceeded":
        assert error["code"] == "context_length_exceeded"
    if status == 404:
        assert error["code"] == "model_not_found"


@pytest.mark.parametrize("name,body,status,param", COMPLETION_CASES,
                         ids=[c[0] for c in COMPLETION_CASES])
def test_bad_completion_request_gets_an_openai_error(http, name, body, status, param):
    error = check_error(post(http, "/v1/completions", body), status, param)
    if name == "context_length_exceeded":
        assert error["code"] == "context_length_exceeded"


def test_long_prompt_beyond_the_context_window_is_context_length_exceeded(http):
    response = http.post("/v1/completions", json={"prompt": [11] * 9000, "max_tokens": 1})
    assert check_error(response, 400, None)["code"] == "context_length_exceeded"


def test_streamed_bad_request_is_an_error_before_any_event(http):
    response = http.post("/v1/chat/completions",
                         json={"messages": USER, "stream": True, "temperature": -1})
    check_error(response, 400, "temperature")


def test_unknown_route_and_wrong_method_answer_in_openai_shape(http):
    check_error(http.get("/v1/nothing-here"), 404, None)
    check_error(http.get("/v1/chat/completions"), 405, None)


def test_bad_tokenizer_requests(http):
    check_error(http.post("/tokenize", json={}), 400, "prompt")
    check_error(http.post("/detokenize", json={"tokens": [VOCAB_SIZE + 5]}), 400, "tokens")
    check_error(http.post("/detokenize", json={"tokens": "abc"}), 400, "tokens")


def test_sdk_raises_bad_request_with_the_param(client, model_name):
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=model_name, prompt="hi", temperature=-1)
    assert raised.value.body["param"] == "temperature"


def test_daemon_is_healthy_after_bad_input(http, model_name):
    for case in CHAT_CASES:
        post(http, "/v1/chat/completions", case[1])
    assert http.get("/health").status_code == 200
    ok = http.post("/v1/completions", json={"model": model_name, "prompt": "Hi",
                                            "max_tokens": 2})
    assert ok.status_code == 200
