"""Responses API input items as the chat messages the chat pipeline runs, and the errors
that name the Responses API's own fields."""

from __future__ import annotations

import pytest

from server.api.errors import APIError
from server.api.responses_api.conversation import chat_request, input_messages
from server.api.responses_api.request import ResponsesRequest


def test_a_string_input_is_one_user_message():
    assert input_messages("Hi") == [{"role": "user", "content": "Hi"}]


def test_function_calls_join_the_assistant_turn_and_outputs_become_tool_messages():
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                          {"type": "input_text", "text": "in Oslo?"}]},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "Checking."}]},
             {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
             {"type": "function_call", "call_id": "c2", "name": "t", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]
    assert input_messages(items) == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "t", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]


def test_a_call_with_no_text_before_it_is_an_assistant_turn_of_its_own():
    items = [{"role": "user", "content": "Hi"},
             {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"}]
    assert input_messages(items)[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]}


@pytest.mark.parametrize("item,param", [
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
     "input.0.content.0"),
    ({"type": "item_reference", "id": "x"}, "input.0.type"),
    ({"type": "function_call", "call_id": "c", "name": "w"}, "input.0.arguments"),
    ({"role": "tool", "content": "x"}, "input.0.role"),
])
def test_items_that_cannot_be_run_are_400s_naming_them(item, param):
    with pytest.raises(APIError) as error:
        input_messages([item])
    assert error.value.status_code == 400 and error.value.param == param


def test_instructions_lead_and_fields_map_onto_chat():
    body = ResponsesRequest.model_validate({
        "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 9, "top_p": 0.5,
        "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "w"},
        "text": {"format": {"type": "json_object"}}})
    chat = chat_request(body, input_messages(body.input))
    assert chat.message_dicts() == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Hi"}]
    assert chat.max_completion_tokens == 9 and chat.top_p == 0.5
    assert chat.tools[0].function.name == "w" and chat.tool_choice.function.name == "w"
    assert chat.response_format.type == "json_object"


def test_a_chat_error_names_the_responses_field():
    body = ResponsesRequest.model_validate({"input": "Hi", "tools": [
        {"type": "function", "name": "w"}, {"type": "function", "name": "w"}],
        "tool_choice": "required"})
    with pytest.raises(APIError) as error:
        chat_request(body, input_messages(body.input))
    assert error.value.param == "tools"


def test_null_settings_take_their_defaults():
    body = ResponsesRequest.model_validate({"input": "Hi", "store": None, "stream": None,
                                            "parallel_tool_calls": None})
    assert (body.store, body.stream, body.parallel_tool_calls) == (True, False, True)
