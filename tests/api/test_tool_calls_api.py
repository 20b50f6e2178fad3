"""Tools on the real daemon (default model, whose template knows no tools: the Hermes-style
fallback), through the official openai SDK and raw HTTP: forced calls always validate,
streamed deltas reassemble to the non-streamed call, and a tool result round-trips."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.api.helpers import chat_body, finish_reasons, stream_events

WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 30},
                          "unit": {"enum": ["celsius", "fahrenheit"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "unit", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}},
        "required": ["timezone"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                           "description": "Weather forecast for a city.",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time.",
                                           "parameters": TIME}}]
PARAMETERS = {"get_weather": WEATHER, "get_time": TIME}
ASK = "What will the weather be in Paris this week?"


def _validate(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), PARAMETERS[name])


@pytest.mark.parametrize("temperature,seed", [(0, None), (0.9, 4), (1.0, 9)])
def test_required_tool_choice_always_yields_valid_calls(client, model_name, temperature,
                                                        seed):
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": ASK}], tools=TOOLS,
        tool_choice="required", max_tokens=200, temperature=temperature, seed=seed)
    choice = completion.choices[0]
    # a small model may go on calling until max_tokens: the calls it finished are returned
    assert choice.finish_reason in ("tool_calls", "length") and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        _validate(call.function.name, call.function.arguments)


def test_named_tool_choice_calls_that_function_and_finishes_with_stop(client, model_name):
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": ASK}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=100, temperature=0.7, seed=1)
    choice = completion.choices[0]
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and choice.finish_reason == "stop"
    _validate("get_time", call.function.arguments)


@pytest.mark.parametrize("tool_choice", ["required",
                                         {"type": "function", "function": {"name": "get_weather"}}])
def test_streamed_tool_call_deltas_reassemble_to_the_non_streamed_call(http, model_name,
                                                                       tool_choice):
    # one call, so that it ends before max_tokens (a call cut off there is streamed as far
    # as it went, but left out of the whole answer)
    body = chat_body(ASK, model=model_name, tools=TOOLS, tool_choice=tool_choice,
                     parallel_tool_calls=False, max_tokens=200, temperature=0)
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    events = stream_events(http, "/v1/chat/completions", {**body, "stream": True})
    calls: dict[int, dict] = {}
    for event in events:
        for choice in event["choices"]:
            for delta in choice["delta"].get("tool_calls", []):
                if delta["index"] not in calls:  # the first delta of a call: id, type, name
                    assert delta["id"] and delta["type"] == "function"
                    calls[delta["index"]] = {"name": delta["function"]["name"], "arguments": ""}
                else:
                    assert "id" not in delta and "name" not in delta["function"]
                calls[delta["index"]]["arguments"] += delta["function"].get("arguments", "")
    expected = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in whole["message"]["tool_calls"]]
    assert [calls[i] for i in sorted(calls)] == expected
    assert finish_reasons(events) == {0: whole["finish_reason"]}


def test_parallel_tool_calls_false_makes_exactly_one_call(client, model_name):
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": ASK}], tools=TOOLS,
        tool_choice="required", parallel_tool_calls=False, max_tokens=200, temperature=0)
    assert len(completion.choices[0].message.tool_calls) == 1


def test_a_tool_result_turn_round_trips_through_the_chat_template(client, http, model_name):
    first = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": ASK}], tools=TOOLS,
        tool_choice="required", max_tokens=200, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    messages = [{"role": "user", "content": ASK},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": call.id, "type": "function",
                                 "function": {"name": call.function.name,
                                              "arguments": call.function.arguments}}]},
                {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."}]
    prompt = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
    text = http.post("/detokenize", json={"tokens": prompt}).json()["prompt"]
    assert "<tool_call>" in text and "Sunny, 21 degrees." in text
    assert json.loads(call.function.arguments) == json.loads(
        text.split("<tool_call>")[1].split("</tool_call>")[0])["arguments"]
    reply = client.chat.completions.create(model=model_name, messages=messages, tools=TOOLS,
                                           max_tokens=30, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_auto_tool_choice_reads_hermes_calls_or_returns_text(client, model_name):
    completion = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": ASK}], tools=TOOLS,
        max_tokens=120, temperature=0)
    message = completion.choices[0].message
    assert message.content or message.tool_calls
    for call in message.tool_calls or []:
        assert call.function.name in PARAMETERS
        json.loads(call.function.arguments)


def test_strict_auto_output_is_free_text_or_a_valid_call(http, model_name):
    strict = [{**tool, "function": {**tool["function"], "strict": True}} for tool in TOOLS]
    for seed in range(3):
        response = http.post("/v1/chat/completions", json=chat_body(
            ASK, model=model_name, tools=strict, tool_choice="auto", max_tokens=150,
            temperature=1.0, seed=seed))
        assert response.status_code == 200, response.text
        message = response.json()["choices"][0]["message"]
        for call in message.get("tool_calls", []):
            _validate(call["function"]["name"], call["function"]["arguments"])


@pytest.mark.parametrize("body,param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f",
                                                   "parameters": {"type": "foo"}}}],
      "tool_choice": "required"}, "tools.0.function.parameters"),
    ({"tools": TOOLS, "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_tool_requests_are_400s_naming_the_field(http, model_name, body, param):
    response = http.post("/v1/chat/completions",
                         json=chat_body(ASK, model=model_name, max_tokens=5, **body))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
