"""POST /v1/responses (and GET / DELETE of stored responses) on the real daemon, through the
official openai SDK; every payload and streamed event is checked against OpenAI's schemas."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.api.openai_schema import assert_matches
from tests.api.responses_helpers import check_recorded, recording_client

WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 30},
                          "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city.",
          "parameters": WEATHER, "strict": True}]
CITY = {"type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40},
                       "population": {"type": "integer", "minimum": 0}},
        "required": ["city", "population"], "additionalProperties": False}


@pytest.fixture
def sdk(daemon):
    client, transport = recording_client(base_url=daemon.base_url)
    with client:
        yield client, transport
    check_recorded(transport)  # whatever a test left unchecked


def test_plain_response_gives_the_text_chat_gives_for_the_same_prompt(sdk, client,
                                                                       model_name):
    responses, transport = sdk
    response = responses.responses.create(model=model_name, input="Name a primary colour.",
                                          max_output_tokens=8, temperature=0)
    check_recorded(transport)
    chat = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Name a primary colour."}],
        max_tokens=8, temperature=0)
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    # (short: a prompt found in the prefix cache is computed in other chunks, and on the
    # CPU that can flip a near-tie some tokens in)
    assert response.output_text == chat.choices[0].message.content
    assert response.status in ("completed", "incomplete")
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.usage.total_tokens == chat.usage.total_tokens


def test_max_output_tokens_ends_the_response_as_incomplete(sdk, model_name):
    responses, transport = sdk
    response = responses.responses.create(model=model_name, input="Tell me a long story.",
                                          max_output_tokens=5, temperature=0)
    check_recorded(transport)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5


def test_streamed_events_rebuild_the_response_they_end_with(sdk, model_name):
    responses, transport = sdk
    with responses.responses.create(model=model_name, input="Write one sentence about the sea.",
                                    instructions="You are a poet.", max_output_tokens=30,
                                    temperature=0, stream=True) as stream:
        sdk_events = list(stream)
    events = check_recorded(transport)
    assert [e.type for e in sdk_events] == [e["type"] for e in events]
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"] or \
        kinds[-1] == "response.completed"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = next(e for e in events if e["type"] == "response.output_text.done")
    final = events[-1]["response"]
    assert deltas == done["text"] == final["output"][0]["content"][0]["text"]
    assert final["instructions"] == "You are a poet." and final["usage"]["output_tokens"] > 0
    plain = responses.responses.create(model=model_name, input="Write one sentence about "
                                       "the sea.", instructions="You are a poet.",
                                       max_output_tokens=30, temperature=0)
    check_recorded(transport)
    assert plain.output_text == deltas


def test_function_tool_round_trip_through_function_call_output(sdk, model_name):
    responses, transport = sdk
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = responses.responses.create(model=model_name, input=ask, tools=TOOLS,
                                       tool_choice="required", max_output_tokens=80,
                                       temperature=0)
    check_recorded(transport)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    result = {"type": "function_call_output", "call_id": calls[0].call_id,
              "output": json.dumps({"temperature_c": 21, "sky": "clear"})}
    second = responses.responses.create(
        model=model_name, input=[*ask, *[c.model_dump(exclude_none=True) for c in calls],
                                 result],
        tools=TOOLS, max_output_tokens=40, temperature=0, store=False)
    check_recorded(transport)
    assert second.status in ("completed", "incomplete") and second.output
    # the call and its result reached the prompt
    assert second.usage.input_tokens > first.usage.input_tokens + len(calls[0].arguments) // 8


def test_streamed_function_call_arguments_join_to_the_done_arguments(sdk, model_name):
    responses, transport = sdk
    with responses.responses.create(
            model=model_name, input="What is the weather in Oslo?", tools=TOOLS,
            tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=80,
            temperature=0, stream=True) as stream:
        list(stream)
    events = check_recorded(transport)
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["name"] == "get_weather"
    deltas = "".join(e["delta"] for e in events
                     if e["type"] == "response.function_call_arguments.delta")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert deltas == done["arguments"] and done["name"] == "get_weather"
    jsonschema.validate(json.loads(done["arguments"]), WEATHER)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["call_id"] == added["item"]["call_id"]


def test_text_format_json_schema_output_follows_the_schema(sdk, model_name):
    responses, transport = sdk
    response = responses.responses.create(
        model=model_name, input="Describe the largest city of Japan as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY,
                         "strict": True}},
        max_output_tokens=60, temperature=0.7)
    check_recorded(transport)
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), CITY)
    assert response.text.format.type == "json_schema"


def test_previous_response_id_continues_the_conversation(sdk, model_name):
    responses, transport = sdk
    first = responses.responses.create(model=model_name, instructions="Answer briefly.",
                                       input="My name is Ada. Say hello to me.",
                                       max_output_tokens=16, temperature=0)
    second = responses.responses.create(model=model_name, previous_response_id=first.id,
                                        input="What is my name?", max_output_tokens=16,
                                        temperature=0)
    check_recorded(transport)
    assert second.previous_response_id == first.id
    # the earlier turn (input and output, but not its instructions) is in the prompt, and
    # its prompt was found in the prefix cache
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens - 8
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_stored_responses_can_be_retrieved_and_deleted(sdk, model_name):
    responses, transport = sdk
    created = responses.responses.create(model=model_name, input="Count to three.",
                                         max_output_tokens=12, temperature=0)
    fetched = responses.responses.retrieve(created.id)
    check_recorded(transport)
    assert fetched.model_dump() == created.model_dump()
    responses.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as error:
        responses.responses.retrieve(created.id)
    assert_matches(error.value.response.json(), "ErrorResponse")
    with pytest.raises(openai.NotFoundError) as error:
        responses.responses.create(model=model_name, previous_response_id=created.id,
                                   input="And then?", max_output_tokens=4)
    assert error.value.body["param"] == "previous_response_id"
    transport.bodies.clear()


def test_store_false_keeps_nothing(sdk, model_name):
    responses, transport = sdk
    created = responses.responses.create(model=model_name, input="Hi", store=False,
                                         max_output_tokens=4)
    check_recorded(transport)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        responses.responses.retrieve(created.id)
    transport.bodies.clear()


@pytest.mark.parametrize("fields,param", [
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "input.0.content.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input.0.content.0"),
    ({"background": True}, "background"),
    ({"tool_choice": {"type": "web_search_preview"}, "tools": TOOLS}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x",
                          "schema": {"type": "object", "minProperties": "many"}}}},
     "text.format.schema"),
])
def test_what_is_not_supported_is_a_400_naming_the_field(http, fields, param):
    response = http.post("/v1/responses", json={"input": "Hi", **fields})
    assert response.status_code == 400, response.text
    assert_matches(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


def test_a_streamed_response_is_stored_and_continued_like_a_plain_one(sdk, model_name):
    responses, transport = sdk
    with responses.responses.create(model=model_name, input="My name is Ada. Greet me.",
                                    max_output_tokens=12, temperature=0,
                                    stream=True) as stream:
        final = [e for e in stream][-1].response
    check_recorded(transport)
    assert responses.responses.retrieve(final.id).output_text == final.output_text
    follow_up = responses.responses.create(model=model_name, previous_response_id=final.id,
                                           input="What is my name?", max_output_tokens=8,
                                           temperature=0)
    check_recorded(transport)
    assert follow_up.usage.input_tokens > final.usage.input_tokens + final.usage.output_tokens - 8


def test_a_streamed_json_schema_response_streams_text_that_follows_the_schema(sdk,
                                                                            model_name):
    responses, transport = sdk
    with responses.responses.create(
            model=model_name, input="Describe Paris as JSON.", stream=True,
            text={"format": {"type": "json_schema", "name": "city", "schema": CITY,
                             "strict": True}},
            max_output_tokens=60, temperature=0.7) as stream:
        list(stream)
    events = check_recorded(transport)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    jsonschema.validate(json.loads(text), CITY)
    assert events[-1]["type"] == "response.completed"
