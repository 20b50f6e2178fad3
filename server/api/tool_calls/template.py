"""Tools through the chat template: OpenAI tool definitions, tool calls and tool results made
ready for a Hugging Face chat template, natively or in a Hermes-style text form.

A template that knows tools (`template_supports_tools`) gets them the way Hugging Face
documents: `tools=[...]` in OpenAI's shape, assistant messages keeping `tool_calls` with each
`function.arguments` parsed into an object, and `tool` messages carrying the called
function's `name`. An assistant message that only calls tools keeps `content: None`: tool-aware
templates test it (`if message.content`, `is not none`), and recent `transformers` drops
None-valued keys before rendering anyway.

Any other template gets ordinary system/user/assistant messages (the fallback), which the
`hermes` parser reads back from the model's output:

- the tools go into a system message (the leading one, after a blank line, else a new one);
- an assistant message's tool calls become `<tool_call>` blocks after its text;
- tool results become a user message of `<tool_response>` blocks, one message for each run
  of consecutive results.

This conversation (FALLBACK_EXAMPLE_MESSAGES with FALLBACK_EXAMPLE_TOOLS):

    system: "You are terse."
    user: "Weather in Paris and Lyon?"
    assistant: content None, tool_calls get_weather({"city": "Paris"}) id "call_1",
               get_weather({"city": "Lyon"}) id "call_2"
    tool (call_1): "18°C, sunny"
    tool (call_2): "15°C, rain"

becomes (FALLBACK_FORMAT_EXAMPLE), role by role:

[system]
    You are terse.

    You can call functions to help with the request. Their signatures, one JSON object a line:
    <tools>
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    </tools>

    To call a function, answer with one block for each call, in this format:
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>
    Each call's result comes back to you inside <tool_response></tool_response>.
[user]
    Weather in Paris and Lyon?
[assistant]
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Lyon"}}
    </tool_call>
[user]
    <tool_response>
    18°C, sunny
    </tool_response>
    <tool_response>
    15°C, rain
    </tool_response>
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"

TOOLS_INSTRUCTION = ("You can call functions to help with the request. "
                     "Their signatures, one JSON object a line:")
TOOL_CALL_FORMAT = (f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, '
                    f'"arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}')
TOOL_CALL_INSTRUCTION = ("To call a function, answer with one block for each call, "
                         f"in this format:\n{TOOL_CALL_FORMAT}\n"
                         "Each call's result comes back to you inside "
                         f"{TOOL_RESPONSE_OPEN}{TOOL_RESPONSE_CLOSE}.")

# The function fields a model is shown; OpenAI's `strict` is a switch of the API, not of the
# signature.
_SIGNATURE_FIELDS = ("name", "description", "parameters")

# The module docstring's example, as data: tests check that the fallback produces exactly
# FALLBACK_FORMAT_EXAMPLE and that the docstring shows it.
FALLBACK_EXAMPLE_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
    "strict": True}}]
FALLBACK_EXAMPLE_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and Lyon?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18°C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "15°C, rain"},
]
FALLBACK_FORMAT_EXAMPLE = [
    {"role": "system", "content": (
        "You are terse.\n\n"
        "You can call functions to help with the request. "
        "Their signatures, one JSON object a line:\n"
        "<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": '
        '"Current weather in a city.", "parameters": {"type": "object", "properties": '
        '{"city": {"type": "string"}}, "required": ["city"]}}}\n'
        "</tools>\n\n"
        "To call a function, answer with one block for each call, in this format:\n"
        "<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call>\n"
        "Each call's result comes back to you inside <tool_response></tool_response>.")},
    {"role": "user", "content": "Weather in Paris and Lyon?"},
    {"role": "assistant", "content": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>')},
    {"role": "user", "content": (
        "<tool_response>\n18°C, sunny\n</tool_response>\n"
        "<tool_response>\n15°C, rain\n</tool_response>")},
]


def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The fallback's description of the tools: instruction, <tools> block, call format."""
    lines = []
    for tool in tools:
        function = tool.get("function") or {}
        signature = {k: function[k] for k in _SIGNATURE_FIELDS if function.get(k) is not None}
        lines.append(json.dumps({"type": tool.get("type", "function"), "function": signature},
                                ensure_ascii=False))
    listing = "\n".join(lines)
    return (f"{TOOLS_INSTRUCTION}\n{TOOLS_OPEN}\n{listing}\n{TOOLS_CLOSE}\n\n"
            f"{TOOL_CALL_INSTRUCTION}")


def tool_call_block(name: str, arguments: Any) -> str:
    """One call as the fallback writes it (and the `hermes` parser reads it)."""
    call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{call}\n{TOOL_CALL_CLOSE}"


def tool_response_block(content: str) -> str:
    return f"{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}"


def chat_template_inputs(messages: list[dict], tools: list[dict] | None, *,
                         supports_tools: bool) -> tuple[list[dict], list[dict] | None]:
    """Messages (and tools) ready for `apply_chat_template(messages, tools=...)`. The tools
    come back only for a template that supports them (None for an empty list too: templates
    test `tools is not none` and would announce no tools); the fallback writes them into the
    messages. The input is never modified."""
    tools = list(tools) if tools else None
    if supports_tools:
        return _native_messages(messages), tools
    return _fallback_messages(messages, tools), None


def _parsed_arguments(arguments: Any) -> Any:
    """A call's arguments as an object where they are a JSON object; otherwise the text as
    sent, which templates that test `arguments is string` still render. No arguments: {}."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        return arguments
    return parsed if isinstance(parsed, dict) else arguments


def _native_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    call_names: dict[str, str] = {}  # tool_call id -> function name, for the tool messages
    out = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call.get("function") or {})
                function["arguments"] = _parsed_arguments(function.get("arguments"))
                calls.append({**call, "function": function})
                if call.get("id") and function.get("name"):
                    call_names[call["id"]] = function["name"]
            message["tool_calls"] = calls
        else:
            # An empty or None list would reach templates that only test `is defined`.
            message.pop("tool_calls", None)
        if message.get("role") == "tool" and not message.get("name"):
            name = call_names.get(message.get("tool_call_id"))
            if name:
                message["name"] = name
            else:
                message.pop("name", None)
        out.append(message)
    return out


def _text(content: Any) -> str:
    # Templates that know nothing of tools concatenate content; None would break them.
    return "" if content is None else content


def _fallback_messages(messages: Sequence[Mapping[str, Any]],
                       tools: list[dict] | None) -> list[dict]:
    out: list[dict] = []
    responses: list[str] = []  # a run of tool results, sent as one user message
    for message in messages:
        role = message.get("role")
        if role == "tool":
            responses.append(tool_response_block(_text(message.get("content"))))
            continue
        if responses:
            out.append({"role": "user", "content": "\n".join(responses)})
            responses = []
        content = _text(message.get("content"))
        if role == "assistant" and message.get("tool_calls"):
            blocks = [tool_call_block((call.get("function") or {}).get("name", ""),
                                      _parsed_arguments((call.get("function") or {})
                                                        .get("arguments")))
                      for call in message["tool_calls"]]
            content = "\n".join([content, *blocks] if content else blocks)
        out.append({"role": role, "content": content})
    if responses:
        out.append({"role": "user", "content": "\n".join(responses)})
    if tools:
        prompt = tools_system_prompt(tools)
        if out and out[0]["role"] == "system":
            system = out[0]["content"]
            out[0] = {"role": "system", "content": f"{system}\n\n{prompt}" if system else prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def template_supports_tools(chat_template: str | None) -> bool:
    """True when the Jinja source reads the `tools` variable and renders tool calls and tool
    messages. Decided on the parsed template, so comments, plain text and string literals
    that merely mention tools do not count; all three must appear in its expressions:
    - `tools` read as a variable;
    - `tool_calls` as an attribute, a subscript or a string (`message.tool_calls`,
      `message['tool_calls']`, `'tool_calls' in message`);
    - the string "tool" (`message.role == 'tool'`) or `tool_call_id`, for tool messages.
    A template that jinja cannot parse is scanned with regular expressions instead."""
    if not chat_template:
        return False
    references = _parsed_references(chat_template) or _scanned_references(chat_template)
    variables, fields = references
    return ("tools" in variables and "tool_calls" in fields
            and ("tool" in fields or "tool_call_id" in fields))


@functools.cache
def _parse_environment() -> Any:
    from jinja2 import Environment
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        """transformers' `{% generation %}...{% endgeneration %}`: kept for its body."""
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return Environment(extensions=["jinja2.ext.loopcontrols", GenerationTag])


def _parsed_references(source: str) -> tuple[set[str], set[str]] | None:
    """The variables the template reads, and the attribute names and string constants it
    uses; None when it does not parse."""
    from jinja2 import TemplateSyntaxError, nodes

    try:
        tree = _parse_environment().parse(source)
    except TemplateSyntaxError:
        return None
    variables = {node.name for node in tree.find_all(nodes.Name) if node.ctx == "load"}
    fields = {node.attr for node in tree.find_all(nodes.Getattr)}
    fields |= {node.value for node in tree.find_all(nodes.Const) if isinstance(node.value, str)}
    return variables, fields


_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_TAG = re.compile(r"\{[{%](.*?)[%}]\}", re.DOTALL)
_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
_WORD = re.compile(r"(\.?)\s*\b([A-Za-z_]\w*)\b")


def _scanned_references(source: str) -> tuple[set[str], set[str]]:
    """The same as `_parsed_references`, roughly, from the text inside `{{ }}` and `{% %}`:
    a word after a dot is an attribute, any other word may be a variable."""
    variables: set[str] = set()
    fields: set[str] = set()
    for tag in _TAG.findall(_COMMENT.sub("", source)):
        for single, double in _STRING.findall(tag):
            fields.add(single or double)
        for dot, word in _WORD.findall(_STRING.sub("''", tag)):
            (fields if dot else variables).add(word)
    return variables, fields
