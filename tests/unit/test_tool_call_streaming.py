"""Streaming tool-call parsers piece by piece: what is held back and when it is released,
how early a call is named, and what happens to malformed output."""

from __future__ import annotations

import pytest

from server.api.tool_calls.base import (
    ContentDelta,
    ToolCallDelta,
    assemble_deltas,
)
from server.api.tool_calls.registry import make_parser
from tests.unit.test_tool_call_parsers import run_stream


def pushes(parser_name: str, pieces: list[str]) -> list[list]:
    """The deltas returned by each push, then by finish."""
    stream = make_parser(parser_name).stream()
    return [stream.push(piece) for piece in pieces] + [stream.finish()]


def every_split(text: str) -> list[list[str]]:
    return [[text]] + [[text[:cut], text[cut:]] for cut in range(1, len(text))] + [list(text)]


# --- content and hold-back ------------------------------------------------------------------

def test_hermes_stream_holds_back_a_possible_tag_start_and_releases_it_once_ruled_out():
    assert pushes("hermes", ["See the <tool", "s> list", "."]) == [
        [ContentDelta("See the")],          # the space is held too: it may end the content
        [ContentDelta(" <tools> list")],
        [ContentDelta(".")],
        [],
    ]


def test_content_deltas_drop_leading_whitespace_and_hold_a_whitespace_tail():
    assert pushes("hermes", ["\n\n", "Hi ", "\n", "there", "  \n"]) == [
        [], [ContentDelta("Hi")], [], [ContentDelta(" \nthere")], [], []]


def test_hermes_stream_treats_a_tag_not_followed_by_json_as_prose():
    assert pushes("hermes", ["Wrap it in <tool_call>", "\n", " tags."]) == [
        [ContentDelta("Wrap it in")], [], [ContentDelta(" <tool_call>\n tags.")], []]


def test_llama3_stream_releases_a_plain_answer_from_its_first_character():
    assert pushes("llama3_json", ["Paris", " is lovely."]) == [
        [ContentDelta("Paris")], [ContentDelta(" is lovely.")], []]


def test_llama3_stream_holds_a_json_answer_until_it_proves_not_to_be_a_call():
    assert pushes("llama3_json", ['{"answer": ', "42}", "\n"]) == [
        [], [ContentDelta('{"answer": 42}')], [], []]


def test_llama3_stream_holds_a_possible_python_tag_then_reads_the_call_after_it():
    assert pushes("llama3_json", ["<|python", '_tag|>{"name": "f", ', '"parameters": {"a"',
                                  ": 1}}"]) == [
        [], [], [ToolCallDelta(0, "f", '{"a"')], [ToolCallDelta(0, None, ": 1}")], []]


def test_mistral_stream_holds_back_a_possible_marker_and_releases_it_once_ruled_out():
    assert pushes("mistral", ["Use [TOOL", "S] here"]) == [
        [ContentDelta("Use")], [ContentDelta(" [TOOLS] here")], []]


def test_pythonic_stream_gives_up_on_a_bracketed_note_before_its_bracket_closes():
    assert pushes("pythonic", ["[Note", ": it's", " raining]"]) == [
        [], [ContentDelta("[Note: it's")], [ContentDelta(" raining]")], []]


def test_pythonic_stream_releases_a_list_that_cannot_begin_with_a_call_at_once():
    assert pushes("pythonic", ["[1", "] Smith"]) == [
        [ContentDelta("[1")], [ContentDelta("] Smith")], []]


# --- how early calls are named and streamed ---------------------------------------------

def test_hermes_stream_names_the_call_when_its_arguments_open_and_streams_them_as_they_grow():
    assert pushes("hermes", ['<tool_call>\n{"name": "get_weather"', ', "arguments": ',
                             '{"city": "Pa', 'ris"}', "}\n</tool_call>"]) == [
        [], [],
        [ToolCallDelta(0, "get_weather", '{"city": "Pa')],
        [ToolCallDelta(0, None, 'ris"}')],
        [], [],
    ]


def test_hermes_stream_sends_an_arguments_first_call_whole_when_its_object_closes():
    assert pushes("hermes", ['<tool_call>\n{"arguments": {"q": "x"}', ', "name": "search"',
                             "}", "\n</tool_call>"]) == [
        [], [], [ToolCallDelta(0, "search", '{"q": "x"}')], [], []]


def test_hermes_stream_is_not_fooled_by_a_brace_inside_an_argument_string():
    deltas = run_stream(make_parser("hermes"),
                        ['<tool_call>{"name": "f", "arguments": {"s": "}', '"}}</tool_call>'])
    assert deltas == [ToolCallDelta(0, "f", '{"s": "}'), ToolCallDelta(0, None, '"}')]


def test_hermes_stream_follows_an_escape_split_across_pieces():
    deltas = run_stream(make_parser("hermes"),
                        ['<tool_call>{"name": "f", "arguments": {"s": "a\\', '"}"}}'])
    assert assemble_deltas(deltas).calls[0].arguments == '{"s": "a\\"}"}'


def test_mistral_args_format_names_the_call_when_its_arguments_open():
    assert pushes("mistral", ["[TOOL_CALLS]get_wea", "ther[AR", "GS]", '{"city"',
                              ': "Paris"}']) == [
        [], [], [], [ToolCallDelta(0, "get_weather", '{"city"')],
        [ToolCallDelta(0, None, ': "Paris"}')], []]


def test_mistral_array_format_streams_each_call_in_turn():
    assert pushes("mistral", ['[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, ',
                              '{"name": "b", "arguments": {', '}}]']) == [
        [ToolCallDelta(0, "a", '{"x": 1}')], [ToolCallDelta(1, "b", "{")],
        [ToolCallDelta(1, None, "}")], []]


def test_pythonic_stream_sends_each_call_at_its_comma_and_the_last_at_the_end():
    assert pushes("pythonic", ['[get_weather(city="Paris")', ", get_time(", 'tz="CET")]']) == [
        [], [ToolCallDelta(0, "get_weather", '{"city": "Paris"}')], [],
        [ToolCallDelta(1, "get_time", '{"tz": "CET"}')]]


def test_pythonic_stream_is_not_fooled_by_brackets_and_commas_inside_strings():
    deltas = run_stream(make_parser("pythonic"),
                        ["[f(s='], ('", ", t=\"\"\"a, ']\"\"\")", "]"])
    assert assemble_deltas(deltas).calls[0].arguments == '{"s": "], (", "t": "a, \']"}'


def test_streams_of_one_parser_do_not_share_state():
    parser = make_parser("hermes")
    first, second = parser.stream(), parser.stream()
    first.push('<tool_call>{"name": "f", "arguments": {')
    assert second.push("plain") == [ContentDelta("plain")]


# --- malformed output -----------------------------------------------------------------------

MALFORMED_BEFORE_ANY_CALL = [
    ("hermes", '<tool_call>\n{"tool": "get_weather", "args": {}}\n</tool_call>'),
    ("hermes", 'Sure.\n<tool_call>\n{"name": "get_wea'),
    ("hermes", '<tool_call>\n{"arguments": {"a": 1}, "name": "f"\n</tool_call>'),
    ("hermes", 'Checking.\n<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>'),
    ("llama3_json", '{"name": "f", "parameters": "not an object"}'),
    ("llama3_json", '<|python_tag|>{"name": "f", "param'),
    ("mistral", "[TOOL_CALLS]get weather[ARGS]{}"),
    ("mistral", '[TOOL_CALLS][{"name": "f"}]'),
    ("mistral", "All done.[TOOL_CALLS]"),
    ("mistral", "[TOOL_CALLS]get_time[ARGS] null"),
    ("pythonic", '[get_weather(city="Paris"'),
    ("pythonic", "[f(x=1e999)]"),
]


@pytest.mark.parametrize(("parser_name", "text"), MALFORMED_BEFORE_ANY_CALL)
def test_malformed_output_is_all_content_streamed_or_not(parser_name, text):
    parser = make_parser(parser_name)
    assert parser.extract(text).content == text.strip()
    assert parser.extract(text).calls == ()
    for pieces in every_split(text):
        deltas = run_stream(parser, pieces)
        assert deltas and all(isinstance(delta, ContentDelta) for delta in deltas), pieces
        assert "".join(delta.text for delta in deltas) == text.strip(), pieces


# Once a call went out, the stream cannot take it back: the text after its last delta is
# content, while extract reports the whole output as content.
MALFORMED_AFTER_A_CALL = [
    ("hermes", ('Let me try.\n<tool_call>\n{"name": "get_weather", "arguments": '
                '{"city": "Paris"}\n</tool_call>'),
     "Let me try.\n\n</tool_call>", [("get_weather", '{"city": "Paris"}')]),
    ("hermes", '<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"oops"}',
     '<tool_call>{"oops"}', [("f", "{}")]),
    ("llama3_json", '{"name": "f", "parameters": {"a": 1}} and then some prose',
     "and then some prose", [("f", '{"a": 1}')]),
    ("llama3_json", '{"name": "f", "arguments": {}, "parameters": {}}',
     ', "parameters": {}}', [("f", "{}")]),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {}}', None, [("f", "{}")]),
    ("mistral", '[TOOL_CALLS]f[ARGS]{"a": 1} trailing words', "trailing words",
     [("f", '{"a": 1}')]),
    ("pythonic", '[f(x=1), g(y=2)] is the syntax.', "g(y=2)] is the syntax.",
     [("f", '{"x": 1}')]),
    ("pythonic", "[f(x=1), f(x=2)", "f(x=2)", [("f", '{"x": 1}')]),
]


@pytest.mark.parametrize(("parser_name", "text", "streamed_content", "streamed_calls"),
                         MALFORMED_AFTER_A_CALL)
def test_malformed_output_after_a_streamed_call_sends_the_rest_as_content(
        parser_name, text, streamed_content, streamed_calls):
    parser = make_parser(parser_name)
    assert parser.extract(text).content == text.strip()
    assert parser.extract(text).calls == ()
    for pieces in every_split(text):
        streamed = assemble_deltas(run_stream(parser, pieces))
        assert streamed.content == streamed_content, pieces
        assert [(call.name, call.arguments) for call in streamed.calls] == streamed_calls
