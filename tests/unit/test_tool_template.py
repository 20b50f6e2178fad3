"""Tools, tool calls and tool results through the chat template: the Hermes-style fallback
on the default model's real tokenizer, a tools-aware template getting them natively, and how
a template is judged to support tools."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest

from server.api.tokenizer import Tokenizer
from server.api.tool_calls import template
from server.api.tool_calls.template import (FALLBACK_EXAMPLE_MESSAGES, FALLBACK_EXAMPLE_TOOLS,
                                            FALLBACK_FORMAT_EXAMPLE, TOOL_CALL_FORMAT,
                                            chat_template_inputs, template_supports_tools)

DEFAULT_TOKENIZER_DIR = Path("/root/.cache/inflightd/models/HuggingFaceTB--SmolLM2-135M-Instruct")

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}}, "strict": False}},
]


def call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


CONVERSATION = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "Weather in Zürich, and the time there?"},
    {"role": "assistant", "content": None, "tool_calls": [
        call("call_a", "get_weather", '{"city": "Zürich"}'),
        call("call_b", "get_time", '{"zone":"Europe/Zurich"}')]},
    {"role": "tool", "tool_call_id": "call_a", "content": "12°C, fog"},
    {"role": "tool", "tool_call_id": "call_b", "content": "14:05"},
]

# A template of our own that knows tools: it lists `tools`, reads each call's arguments as a
# mapping (`.items()` fails on the JSON text) and renders tool messages with their name.
TOOLS_AWARE_TEMPLATE = """
{%- if tools %}<|im_start|>system
{% for tool in tools %}tool {{ tool.function.name }} {{ tool.function.parameters | tojson }}
{% endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% for tool_call in message.tool_calls %}call {{ tool_call.id }} {{ tool_call.function.name }}
{%- for key, value in tool_call.function.arguments.items() %} {{ key }}={{ value }}{% endfor %};
{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>tool {{ message.name }} {{ message.tool_call_id }}
{{ message.content }}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def hf_tokenizer():
    if not DEFAULT_TOKENIZER_DIR.is_dir():
        pytest.skip(f"the default model's tokenizer is not at {DEFAULT_TOKENIZER_DIR}")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(DEFAULT_TOKENIZER_DIR))


@pytest.fixture(scope="module")
def default_tokenizer(hf_tokenizer) -> Tokenizer:
    return Tokenizer(hf_tokenizer)


@pytest.fixture(scope="module")
def tools_tokenizer(hf_tokenizer) -> Tokenizer:
    hf = copy.deepcopy(hf_tokenizer)
    hf.chat_template = TOOLS_AWARE_TEMPLATE
    return Tokenizer(hf)


def in_order(text: str, pieces: list[str]) -> bool:
    position = 0
    for piece in pieces:
        position = text.find(piece, position)
        if position < 0:
            return False
        position += len(piece)
    return True


# --- the default model: no tool support, the fallback -------------------------------------

def test_default_model_template_does_not_support_tools(default_tokenizer):
    assert default_tokenizer.supports_tools is False


def test_default_model_renders_a_full_tool_round_trip_in_the_fallback_format(default_tokenizer):
    prompt = default_tokenizer.render_chat(CONVERSATION, tools=TOOLS)
    tools_block = "<tools>\n" + "\n".join(
        json.dumps({"type": "function", "function": {k: v for k, v in t["function"].items()
                                                     if k != "strict"}}, ensure_ascii=False)
        for t in TOOLS) + "\n</tools>"
    assert in_order(prompt, [
        "<|im_start|>system\nYou are a weather bot.\n\n", tools_block, TOOL_CALL_FORMAT,
        "<|im_end|>",
        "<|im_start|>user\nWeather in Zürich, and the time there?<|im_end|>",
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Zurich"}}\n'
        "</tool_call><|im_end|>",
        "<|im_start|>user\n<tool_response>\n12°C, fog\n</tool_response>\n"
        "<tool_response>\n14:05\n</tool_response><|im_end|>",
        "<|im_start|>assistant\n"])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>system") == 1  # the tools joined the given system message
    assert '"strict"' not in prompt


def test_default_model_encodes_tools_and_plain_chat_alike(default_tokenizer):
    prompt = default_tokenizer.render_chat(CONVERSATION, tools=TOOLS)
    assert default_tokenizer.encode_chat(CONVERSATION, tools=TOOLS) == \
        default_tokenizer.encode(prompt, add_special_tokens=False)
    plain = [{"role": "user", "content": "Hi"}]
    assert default_tokenizer.render_chat(plain) == default_tokenizer._hf.apply_chat_template(
        plain, tokenize=False, add_generation_prompt=True)


def test_fallback_reproduces_the_documented_example():
    messages, tools = chat_template_inputs(FALLBACK_EXAMPLE_MESSAGES, FALLBACK_EXAMPLE_TOOLS,
                                           supports_tools=False)
    assert tools is None
    assert messages == FALLBACK_FORMAT_EXAMPLE
    for message in FALLBACK_FORMAT_EXAMPLE:  # the module docstring shows the same text
        assert f"[{message['role']}]\n" + textwrap.indent(message["content"], "    ") \
            in template.__doc__


def test_fallback_prepends_a_tools_system_message_when_there_is_none():
    messages, _ = chat_template_inputs([{"role": "user", "content": "Hi"}], TOOLS,
                                       supports_tools=False)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == template.tools_system_prompt(TOOLS)
    assert messages[0]["content"].startswith(template.TOOLS_INSTRUCTION)


def test_fallback_without_tools_passes_plain_messages_as_role_and_content_only():
    given = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "Hi", "name": "ada"},
             {"role": "assistant", "content": None}]
    messages, tools = chat_template_inputs(given, None, supports_tools=False)
    assert tools is None
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": ""}]
    assert chat_template_inputs(given, [], supports_tools=False)[0] == messages


def test_fallback_keeps_assistant_text_before_its_tool_calls():
    given = [{"role": "assistant", "content": "Checking.",
              "tool_calls": [call("c1", "get_time", "{}")]}]
    messages, _ = chat_template_inputs(given, None, supports_tools=False)
    assert messages[0]["content"] == \
        'Checking.\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


def test_fallback_writes_arguments_that_are_not_a_json_object_as_a_string():
    given = [{"role": "assistant", "content": None,
              "tool_calls": [call("c1", "f", "not json"), call("c2", "g", "[1, 2]")]}]
    content = chat_template_inputs(given, None, supports_tools=False)[0][0]["content"]
    assert '{"name": "f", "arguments": "not json"}' in content
    assert '{"name": "g", "arguments": "[1, 2]"}' in content


def test_a_lone_tool_result_mid_conversation_becomes_one_user_turn():
    given = [{"role": "user", "content": "Time?"},
             {"role": "assistant", "content": None,
              "tool_calls": [call("c1", "get_time", "{}")]},
             {"role": "tool", "tool_call_id": "c1", "content": "09:00"},
             {"role": "assistant", "content": "It is 09:00."},
             {"role": "user", "content": "Thanks"}]
    messages, _ = chat_template_inputs(given, None, supports_tools=False)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == "<tool_response>\n09:00\n</tool_response>"
    assert messages[3]["content"] == "It is 09:00."


def test_consecutive_tool_results_merge_into_one_user_message_in_order():
    messages, _ = chat_template_inputs(CONVERSATION, None, supports_tools=False)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == ("<tool_response>\n12°C, fog\n</tool_response>\n"
                                       "<tool_response>\n14:05\n</tool_response>")


def test_inputs_are_not_modified():
    given = copy.deepcopy(CONVERSATION)
    chat_template_inputs(given, TOOLS, supports_tools=False)
    chat_template_inputs(given, TOOLS, supports_tools=True)
    assert given == CONVERSATION


# --- a tools-aware template: tools, calls and results go natively -------------------------

def test_tools_aware_template_gets_tools_calls_as_objects_and_named_results(tools_tokenizer):
    assert tools_tokenizer.supports_tools is True
    prompt = tools_tokenizer.render_chat(CONVERSATION, tools=TOOLS)
    assert in_order(prompt, [
        "<|im_start|>system\ntool get_weather ", "tool get_time ", "<|im_end|>",
        "<|im_start|>system\nYou are a weather bot.<|im_end|>",
        "<|im_start|>user\nWeather in Zürich, and the time there?<|im_end|>",
        "<|im_start|>assistant\ncall call_a get_weather city=Zürich;\n"
        "call call_b get_time zone=Europe/Zurich;\n<|im_end|>",
        "<|im_start|>tool get_weather call_a\n12°C, fog<|im_end|>",
        "<|im_start|>tool get_time call_b\n14:05<|im_end|>",
        "<|im_start|>assistant\n"])
    assert "<tool_call>" not in prompt and "<tools>" not in prompt


def test_tools_aware_template_without_tools_renders_no_tool_section(tools_tokenizer):
    prompt = tools_tokenizer.render_chat([{"role": "user", "content": "Hi"}], tools=[])
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_native_inputs_parse_arguments_and_name_tool_messages_from_the_call_id():
    messages, tools = chat_template_inputs(CONVERSATION, TOOLS, supports_tools=True)
    assert tools == TOOLS
    assistant = messages[2]
    assert assistant["content"] is None  # tool-aware templates test it; see the module doc
    assert [c["function"]["arguments"] for c in assistant["tool_calls"]] == \
        [{"city": "Zürich"}, {"zone": "Europe/Zurich"}]
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_a", "call_b"]
    assert messages[3] == {"role": "tool", "tool_call_id": "call_a", "content": "12°C, fog",
                           "name": "get_weather"}
    assert messages[4]["name"] == "get_time"
    assert messages[:2] == CONVERSATION[:2]


def test_native_inputs_keep_arguments_that_are_not_an_object_as_text():
    given = [{"role": "assistant", "content": None,
              "tool_calls": [call("c1", "f", "oops"), call("c2", "g", "[1]"),
                             call("c3", "h", "")]},
             {"role": "tool", "tool_call_id": "unknown", "content": "x"}]
    messages, _ = chat_template_inputs(given, None, supports_tools=True)
    assert [c["function"]["arguments"] for c in messages[0]["tool_calls"]] == ["oops", "[1]", {}]
    assert "name" not in messages[1]  # no earlier call has that id


def test_native_tool_message_name_lookup_uses_the_latest_call_with_that_id():
    given = [{"role": "assistant", "content": None,
              "tool_calls": [call("same", "first", "{}")]},
             {"role": "tool", "tool_call_id": "same", "content": "1"},
             {"role": "assistant", "content": None,
              "tool_calls": [call("same", "second", "{}")]},
             {"role": "tool", "tool_call_id": "same", "content": "2"},
             {"role": "tool", "tool_call_id": "same", "content": "3", "name": "given"}]
    messages, _ = chat_template_inputs(given, None, supports_tools=True)
    assert [m.get("name") for m in messages if m["role"] == "tool"] == \
        ["first", "second", "given"]


# --- which templates support tools --------------------------------------------------------

def test_template_supports_tools_needs_tools_calls_and_tool_messages():
    assert template_supports_tools(TOOLS_AWARE_TEMPLATE)
    # The Mistral-style spelling: subscripts, `is defined`, `tools` reset when undefined.
    assert template_supports_tools(
        "{%- if not tools is defined %}{%- set tools = none %}{%- endif %}"
        "{%- for m in messages %}{%- if m['tool_calls'] is defined %}[CALLS]"
        "{%- elif m['role'] == 'tool' %}{{ m['content'] }}{%- endif %}{%- endfor %}")
    # `'tool_calls' in message`, `tool_call_id` for results, inside a macro and a
    # transformers `{% generation %}` block.
    assert template_supports_tools(
        "{% macro listing() %}{{ tools | tojson }}{% endmacro %}{{ listing() }}"
        "{% for m in messages %}{% if 'tool_calls' in m %}{% generation %}x{% endgeneration %}"
        "{% elif m.tool_call_id is defined %}{{ m.content }}{% endif %}{% endfor %}")


@pytest.mark.parametrize("source", [
    None, "",
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    # mentions of tools in text, a comment and string literals are not reads
    "tools tool_calls tool{# tools, message.tool_calls, 'tool' #}"
    "{% for m in messages %}{{ 'tools' }}{{ m['tool'] }}{{ 'tool_calls' }}{% endfor %}",
    # reads `tools` but never renders a call
    "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}"
    "{% if m.role == 'tool' %}!{% endif %}{% endfor %}",
    # renders calls and results but never the tool definitions
    "{% for m in messages %}{{ m.tool_calls }}{% if m.role == 'tool' %}!{% endif %}{% endfor %}",
    # calls and definitions, but tool messages have nowhere to go
    "{{ tools }}{% for m in messages %}{{ m.tool_calls }}{% endfor %}",
])
def test_templates_that_do_not_render_tools_are_not_tool_aware(source):
    assert not template_supports_tools(source)


def test_template_that_jinja_cannot_parse_is_judged_from_its_tags():
    broken = ("{% for m in messages %}{% if m.tool_calls %}{{ tools }}"
              "{% elif m.role == 'tool' %}{{ m.content }}{% endif %}{% endfor %}{% unknown_tag %}")
    assert template_supports_tools(broken)
    assert not template_supports_tools("{# tools tool_calls 'tool' #}{{ x }}{% unknown_tag %}")


def test_named_templates_are_judged_by_the_one_used_with_tools(hf_tokenizer):
    hf = copy.deepcopy(hf_tokenizer)
    hf.chat_template = {"default": hf_tokenizer.chat_template, "tool_use": TOOLS_AWARE_TEMPLATE}
    assert Tokenizer(hf).supports_tools is True
