"""Tool-call parser registry, strict-auto call formats, grammar-forced parsers, and what
does not count as a call."""

from __future__ import annotations

import json

import pytest

from server.api.tool_calls.base import (
    ContentDelta,
    ExtractedToolCalls,
    ParsedToolCall,
    ToolCallDelta,
    assemble_deltas,
)
from server.api.tool_calls.forced import NamedCallParser, RequiredCallsParser
from server.api.tool_calls.hermes import HermesToolCallParser
from server.api.tool_calls.llama3_json import Llama3JsonToolCallParser
from server.api.tool_calls.mistral import MistralToolCallParser
from server.api.tool_calls.pythonic import PythonicToolCallParser
from server.api.tool_calls.registry import TOOL_CALL_PARSERS, make_parser


def run_stream(parser, pieces):
    stream = parser.stream()
    deltas = []
    for piece in pieces:
        deltas += stream.push(piece)
    return deltas + stream.finish()


# --- registry ---------------------------------------------------------------------------

def test_registry_offers_the_four_formats_under_their_own_names():
    assert TOOL_CALL_PARSERS == {"hermes": HermesToolCallParser,
                                 "llama3_json": Llama3JsonToolCallParser,
                                 "mistral": MistralToolCallParser,
                                 "pythonic": PythonicToolCallParser}
    for name, parser_class in TOOL_CALL_PARSERS.items():
        assert parser_class.name == name
        assert isinstance(make_parser(name), parser_class)


def test_make_parser_rejects_an_unknown_name_listing_the_valid_ones():
    with pytest.raises(ValueError) as raised:
        make_parser("qwen3_xml")
    message = str(raised.value)
    assert "qwen3_xml" in message
    assert all(name in message for name in TOOL_CALL_PARSERS)


def test_formats_whose_markers_are_special_tokens_ask_the_detokenizer_to_keep_them():
    needs = {name: parser.needs_special_tokens for name, parser in TOOL_CALL_PARSERS.items()}
    assert needs == {"hermes": False, "llama3_json": True, "mistral": True, "pythonic": False}


# --- strict auto: structural-tag call formats -------------------------------------------

ARGUMENTS = ['{"city": "Zürich", "days": [1, 2], "note": "a \\"}\\" b"}', "{}",
             '{"filters": {"lang": ["fr"], "deep": {"x": null}}}']


def test_call_formats_write_the_documented_text():
    hermes = make_parser("hermes").call_format()
    assert (hermes.trigger, hermes.begin("get_weather"), hermes.end) == (
        "<tool_call>", '<tool_call>\n{"name": "get_weather", "arguments": ', "}\n</tool_call>")
    llama3 = make_parser("llama3_json").call_format()
    assert (llama3.trigger, llama3.begin("get_weather"), llama3.end) == (
        '{"name": ', '{"name": "get_weather", "parameters": ', "}")
    mistral = make_parser("mistral").call_format()
    assert (mistral.trigger, mistral.begin("get_weather"), mistral.end) == (
        "[TOOL_CALLS]", "[TOOL_CALLS]get_weather[ARGS]", "")


def test_pythonic_has_no_call_format():
    assert make_parser("pythonic").call_format() is None


@pytest.mark.parametrize("parser_name", ["hermes", "llama3_json", "mistral"])
@pytest.mark.parametrize("arguments", ARGUMENTS)
def test_a_call_written_in_the_call_format_parses_back(parser_name, arguments):
    parser = make_parser(parser_name)
    call_format = parser.call_format()
    assert call_format.begin("get_weather").startswith(call_format.trigger)
    text = call_format.begin("get_weather") + arguments + call_format.end
    assert parser.extract(text).calls == (ParsedToolCall("get_weather", arguments),)
    assert assemble_deltas(run_stream(parser, list(text))).calls == parser.extract(text).calls


@pytest.mark.parametrize("parser_name", ["hermes", "llama3_json", "mistral"])
def test_several_calls_written_in_the_call_format_parse_back_in_order(parser_name):
    parser = make_parser(parser_name)
    call_format = parser.call_format()
    names = ["get_weather", "get_time", "search.docs"]
    text = "\n".join(call_format.begin(name) + arguments + call_format.end
                     for name, arguments in zip(names, ARGUMENTS))
    expected = tuple(ParsedToolCall(name, arguments) for name, arguments in zip(names, ARGUMENTS))
    assert parser.extract(text) == ExtractedToolCalls(None, expected)
    assert assemble_deltas(run_stream(parser, list(text))).calls == expected


# --- grammar-forced output ------------------------------------------------------------------

def test_named_call_stream_names_the_function_on_its_first_piece():
    stream = NamedCallParser("get_weather").stream()
    assert stream.push("  ") == [ToolCallDelta(0, "get_weather", "")]
    assert stream.push('{"city"') == [ToolCallDelta(0, None, '{"city"')]
    assert stream.push(': "Paris"}\n') == [ToolCallDelta(0, None, ': "Paris"}')]
    assert stream.finish() == []


def test_named_call_is_reported_even_for_an_empty_output():
    parser = NamedCallParser("ping")
    assert parser.extract("").calls == (ParsedToolCall("ping", ""),)
    assert parser.stream().finish() == [ToolCallDelta(0, "ping", "")]


def test_required_calls_stream_names_each_call_as_its_parameters_open():
    stream = RequiredCallsParser().stream()
    assert stream.push('[{"name": "get_weather", "parameters": ') == []
    assert stream.push('{"city": "Pa') == [ToolCallDelta(0, "get_weather", '{"city": "Pa')]
    assert stream.push('ris"}}, {"name": "get_time", "parameters": {}}') == [
        ToolCallDelta(0, None, 'ris"}'), ToolCallDelta(1, "get_time", "{}")]
    assert stream.push("]") == []
    assert stream.finish() == []


def test_required_calls_cut_short_by_the_length_limit_keep_what_was_written():
    text = '[{"name": "get_weather", "parameters": {"city": "Zürich"}}, {"name": "get_time", ' \
           '"parameters": {"tz": "Eur'
    parser = RequiredCallsParser()
    expected = (ParsedToolCall("get_weather", '{"city": "Zürich"}'),
                ParsedToolCall("get_time", '{"tz": "Eur'))
    assert parser.extract(text) == ExtractedToolCalls(None, expected)
    for cut in range(len(text) + 1):
        deltas = run_stream(parser, [text[:cut], text[cut:]])
        assert not any(isinstance(delta, ContentDelta) for delta in deltas)
        assert assemble_deltas(deltas).calls == expected


def test_forced_parsers_do_not_describe_a_call_format():
    assert NamedCallParser("f").call_format() is None
    assert RequiredCallsParser().call_format() is None


# --- what is not a call ---------------------------------------------------------------------

NOT_CALL_OBJECTS = [
    '{"name": "f", "arguments": {"a": 1}, "id": "call_1"}',   # an unknown extra key
    '{"name": "f"}',                                          # no arguments at all
    '{"name": "f", "arguments": "{\\"a\\": 1}"}',             # arguments as a string
    '{"name": 7, "arguments": {}}',                           # a name that is no string
    '{"name": "f", "arguments": {"a": 1}, "name": "g"}',      # a repeated key
    '{"name": "f", "arguments": {"a": 1,}}',                  # not JSON
    '{"name": "f", "arguments": {"x": NaN}}',                 # NaN is not JSON
]


@pytest.mark.parametrize("call_object", NOT_CALL_OBJECTS)
def test_hermes_treats_a_block_that_is_not_a_call_object_as_content(call_object):
    text = f"<tool_call>\n{call_object}\n</tool_call>"
    assert make_parser("hermes").extract(text) == ExtractedToolCalls(text, ())


@pytest.mark.parametrize("call_object", NOT_CALL_OBJECTS)
def test_llama3_treats_an_object_that_is_not_a_call_as_content(call_object):
    assert make_parser("llama3_json").extract(call_object).calls == ()


NOT_JSON_LITERALS = [
    "[f(x=1e999)]",            # infinity has no JSON spelling
    "[f(x=b'raw')]",           # bytes
    "[f(x={1, 2})]",           # a set
    "[f(x={1: 'a'})]",         # a dict key that is no string
    "[f(x=1, x=2)]",           # a repeated keyword
    "[f(**options)]",          # unpacking
    "[f(x=-True)]",            # arithmetic on a bool
    "[f(x=[*rest])]",          # a starred element
    "[f(x=1)(y=2)]",           # a call of a call
    "[(lambda: 1)()]",         # a callee that is no name
    "[f(x=__import__('os'))]",
]


@pytest.mark.parametrize("text", NOT_JSON_LITERALS)
def test_pythonic_accepts_only_json_ready_literals_as_arguments(text):
    assert make_parser("pythonic").extract(text).calls == ()
    assert make_parser("pythonic").extract(text).content == text


def test_pythonic_arguments_are_json_text_keeping_non_ascii_characters():
    call = make_parser("pythonic").extract('[greet(name="Zoë", tags=("a",), n=-2.5)]').calls[0]
    assert call.arguments == '{"name": "Zoë", "tags": ["a"], "n": -2.5}'
    assert json.loads(call.arguments) == {"name": "Zoë", "tags": ["a"], "n": -2.5}
