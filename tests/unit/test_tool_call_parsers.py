"""Tool-call parsers on captured-looking outputs: what `extract` finds, and that streaming the
same output in pieces cut anywhere reassembles to exactly that.

The streaming contract, for every output below and every way of cutting it (one piece; two
pieces, at every position; a character at a time; word-like pieces; random cuts):
(a) the content deltas concatenate to `extract(text).content` (None read as ""),
(b) each call's first delta carries its name, later ones none, and its argument fragments
    concatenate to `extract(text).calls[i].arguments` exactly,
(c) the stream finds as many calls as `extract`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.api.tool_calls.base import ContentDelta, ToolCallDelta, ToolCallParser
from server.api.tool_calls.forced import NamedCallParser, RequiredCallsParser
from server.api.tool_calls.registry import make_parser


@dataclass(frozen=True)
class Captured:
    id: str
    parser: str                          # a registry name, or "named:<function>", "required"
    text: str
    content: str | None
    calls: tuple[tuple[str, str], ...]   # (name, arguments text) as extract must give them


def args(**values) -> str:
    """Arguments as the pythonic parser writes them: json.dumps of the keyword values."""
    return json.dumps(values, ensure_ascii=False)


CAPTURED = [
    # --- hermes -------------------------------------------------------------------------
    Captured("hermes_single_call", "hermes",
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
             '"celsius"}}\n</tool_call>',
             None, (("get_weather", '{"city": "Paris", "unit": "celsius"}'),)),
    Captured("hermes_text_before_the_call", "hermes",
             "I'll check the current weather in Zürich for you.\n\n<tool_call>\n"
             '{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}\n'
             "</tool_call>",
             "I'll check the current weather in Zürich for you.",
             (("get_weather", '{"city": "Zürich", "unit": "celsius"}'),)),
    Captured("hermes_two_calls", "hermes",
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
             '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"timezone": '
             '"Europe/Paris"}}\n</tool_call>',
             None, (("get_weather", '{"city": "Paris"}'),
                    ("get_time", '{"timezone": "Europe/Paris"}'))),
    Captured("hermes_escaped_quotes_braces_and_backslashes", "hermes",
             '<tool_call>\n{"name": "run_sql", "arguments": {"query": "SELECT \\"name\\" '
             "FROM users WHERE bio LIKE '%}{%'\", \"path\": \"C:\\\\Users\\\\me\\\\\", "
             '"sign": "5\\" {", "limit": 10}}\n</tool_call>',
             None, (("run_sql", ('{"query": "SELECT \\"name\\" FROM users WHERE bio LIKE '
                                 "'%}{%'\", \"path\": \"C:\\\\Users\\\\me\\\\\", "
                                 '"sign": "5\\" {", "limit": 10}')),)),
    Captured("hermes_nested_objects_and_unicode", "hermes",
             '<tool_call>\n{"name": "create_event", "arguments": {"title": "Réunion '
             "d'équipe 🎉\", \"attendees\": [{\"name\": \"李雷\", \"email\": "
             '"li.lei@example.com"}], "reminder": {"minutes_before": 15, "channels": '
             '["email", "push"]}, "note": "caf\\u00e9", "private": true}}\n</tool_call>',
             None, (("create_event", ("{\"title\": \"Réunion d'équipe 🎉\", \"attendees\": "
                                      '[{"name": "李雷", "email": "li.lei@example.com"}], '
                                      '"reminder": {"minutes_before": 15, "channels": '
                                      '["email", "push"]}, "note": "caf\\u00e9", '
                                      '"private": true}')),)),
    Captured("hermes_arguments_before_name", "hermes",
             '<tool_call>\n{"arguments": {"query": "hermes function calling"}, '
             '"name": "web_search"}\n</tool_call>',
             None, (("web_search", '{"query": "hermes function calling"}'),)),
    Captured("hermes_parameters_key_compact_json", "hermes",
             '<tool_call>{"name":"lookup_order","parameters":{"order_id":42,'
             '"expand":["items"]}}</tool_call>',
             None, (("lookup_order", '{"order_id":42,"expand":["items"]}'),)),
    Captured("hermes_final_block_without_close_tag", "hermes",
             'Sure, one moment.\n<tool_call>\n{"name": "get_time", "arguments": {}}\n',
             "Sure, one moment.", (("get_time", "{}"),)),
    Captured("hermes_text_between_and_after_calls", "hermes",
             "First I look up the rate.\n<tool_call>\n{\"name\": \"get_rate\", \"arguments\": "
             '{"from": "EUR", "to": "USD"}}\n</tool_call>\nThen I convert the amount.\n'
             '<tool_call>\n{"name": "convert", "arguments": {"amount": 12.5}}\n</tool_call>\n'
             "Both calls are queued.",
             "First I look up the rate.\n\nThen I convert the amount.\n\nBoth calls are queued.",
             (("get_rate", '{"from": "EUR", "to": "USD"}'), ("convert", '{"amount": 12.5}'))),
    Captured("hermes_plain_answer", "hermes",
             "The capital of France is Paris.\n\nIt has been the capital since 987.\n",
             "The capital of France is Paris.\n\nIt has been the capital since 987.", ()),
    Captured("hermes_prose_mentions_the_tags", "hermes",
             "To call a tool, wrap the JSON in a <tool_call> tag; the <tools> list in the "
             "system prompt says which exist. Close it with </tool_call>.",
             "To call a tool, wrap the JSON in a <tool_call> tag; the <tools> list in the "
             "system prompt says which exist. Close it with </tool_call>.", ()),
    Captured("hermes_pretty_printed_with_stray_whitespace", "hermes",
             '\n\n  <tool_call>\n  {\n    "name" : "set_alarm" ,\n    "arguments" :\n      '
             '{\n        "time": "07:30",\n        "days": [1, 2, 3]\n      }\n  }\n'
             "  </tool_call>  \n",
             None, (("set_alarm", ('{\n        "time": "07:30",\n        "days": [1, 2, 3]\n'
                                   "      }")),)),
    Captured("hermes_braces_in_prose_before_a_call", "hermes",
             'Use {curly} braces} here <tool_call>\n{"name": "echo", "arguments": '
             '{"text": "}"}}\n</tool_call>',
             "Use {curly} braces} here", (("echo", '{"text": "}"}'),)),
    # --- llama3_json ----------------------------------------------------------------------
    Captured("llama3_single_call", "llama3_json",
             '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
             None, (("get_weather", '{"city": "Paris", "unit": "celsius"}'),)),
    Captured("llama3_python_tag", "llama3_json",
             '<|python_tag|>{"name": "get_weather", "parameters": {"city": '
             '"San Francisco, CA"}}',
             None, (("get_weather", '{"city": "San Francisco, CA"}'),)),
    Captured("llama3_two_calls_separated_by_semicolon", "llama3_json",
             '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", '
             '"parameters": {"timezone": "Europe/Paris"}}',
             None, (("get_weather", '{"city": "Paris"}'),
                    ("get_time", '{"timezone": "Europe/Paris"}'))),
    Captured("llama3_arguments_key_with_escapes_and_unicode", "llama3_json",
             '\n{"name": "translate", "arguments": {"text": "Grüß Gott, \\"Freund\\" {}", '
             '"target": "日本語"}}\n',
             None, (("translate", '{"text": "Grüß Gott, \\"Freund\\" {}", "target": "日本語"}'),)),
    Captured("llama3_calls_separated_by_newline", "llama3_json",
             '{"name": "list_files", "parameters": {}}\n{"name": "stat", "parameters": '
             '{"nested": {"deep": [{"x": null}]}}};',
             None, (("list_files", "{}"), ("stat", '{"nested": {"deep": [{"x": null}]}}'))),
    Captured("llama3_plain_answer", "llama3_json",
             "I don't have live weather data, but Paris is usually mild in May.",
             "I don't have live weather data, but Paris is usually mild in May.", ()),
    Captured("llama3_json_answer_is_content", "llama3_json",
             '{"answer": 42, "unit": "km"}', '{"answer": 42, "unit": "km"}', ()),
    Captured("llama3_json_answer_with_a_name_key_is_content", "llama3_json",
             '{"name": "Ada Lovelace", "born": 1815}',
             '{"name": "Ada Lovelace", "born": 1815}', ()),
    Captured("llama3_python_tag_with_code_is_content", "llama3_json",
             "<|python_tag|>print(sum(range(10)))",
             "<|python_tag|>print(sum(range(10)))", ()),
    # --- mistral --------------------------------------------------------------------------
    Captured("mistral_array_single_call", "mistral",
             '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", '
             '"unit": "celsius"}}]',
             None, (("get_weather", '{"city": "Paris", "unit": "celsius"}'),)),
    Captured("mistral_array_two_calls_after_text", "mistral",
             'Let me check both cities.[TOOL_CALLS][{"name": "get_weather", "arguments": '
             '{"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Zürich"}}]',
             "Let me check both cities.",
             (("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Zürich"}'))),
    Captured("mistral_args_format", "mistral",
             '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}',
             None, (("get_weather", '{"city": "Paris", "unit": "celsius"}'),)),
    Captured("mistral_args_format_two_calls", "mistral",
             '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]'
             '{"tz": "Europe/Paris"}',
             None, (("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "Europe/Paris"}'))),
    Captured("mistral_args_format_escapes_and_nesting", "mistral",
             'I will search the docs.\n[TOOL_CALLS]search_docs[ARGS]{"query": "\\"tool_calls\\" '
             '{not json}", "filters": {"lang": ["fr", "de"], "since": "2024-01-01"}}',
             "I will search the docs.",
             (("search_docs", ('{"query": "\\"tool_calls\\" {not json}", "filters": '
                               '{"lang": ["fr", "de"], "since": "2024-01-01"}}')),)),
    Captured("mistral_empty_arguments", "mistral", "[TOOL_CALLS]list_files[ARGS]{}",
             None, (("list_files", "{}"),)),
    Captured("mistral_plain_answer", "mistral",
             "Bonjour ! Comment puis-je vous aider aujourd'hui ?",
             "Bonjour ! Comment puis-je vous aider aujourd'hui ?", ()),
    Captured("mistral_prose_with_brackets", "mistral",
             "Write [TOOL] or [TOOLS] in brackets, never [TOOL_CALL].",
             "Write [TOOL] or [TOOLS] in brackets, never [TOOL_CALL].", ()),
    # --- pythonic -------------------------------------------------------------------------
    Captured("pythonic_two_calls", "pythonic",
             '[get_weather(city="Paris", unit="c"), get_time(tz="CET")]',
             None, (("get_weather", args(city="Paris", unit="c")), ("get_time", args(tz="CET")))),
    Captured("pythonic_wrapped_in_python_tags", "pythonic",
             '<|python_start|>[get_weather(city="Tōkyō")]<|python_end|>',
             None, (("get_weather", args(city="Tōkyō")),)),
    Captured("pythonic_all_literal_kinds", "pythonic",
             "[search(query='it\\'s \"quoted\" ]), (', filters={\"year\": 2024, \"tags\": "
             '["a", "b"]}, limit=-5, exact=True, cursor=None, score=0.5, ids=(1, 2))]',
             None, (("search", args(query="it's \"quoted\" ]), (",
                                    filters={"year": 2024, "tags": ["a", "b"]}, limit=-5,
                                    exact=True, cursor=None, score=0.5, ids=[1, 2])),)),
    Captured("pythonic_multiline_with_trailing_commas", "pythonic",
             '[\n    get_weather(city="Paris"),\n    get_weather(\n        city="Zürich",\n'
             "    ),\n]\n",
             None, (("get_weather", args(city="Paris")), ("get_weather", args(city="Zürich")))),
    Captured("pythonic_no_arguments", "pythonic", "[get_time()]", None, (("get_time", "{}"),)),
    Captured("pythonic_dotted_callee", "pythonic",
             '[brave_search.call(query="llama 4 release date")]',
             None, (("brave_search.call", args(query="llama 4 release date")),)),
    Captured("pythonic_triple_quoted_string", "pythonic",
             '[write_file(path="demo.py", content="""def f():\n    return [1, (2)], \'x\'\n""", '
             "note='''it's [here''')]",
             None, (("write_file", args(path="demo.py",
                                        content="def f():\n    return [1, (2)], 'x'\n",
                                        note="it's [here")),)),
    Captured("pythonic_json_spellings_of_literals", "pythonic",
             "[set_flags(enabled=true, beta=false, owner=null)]",
             None, (("set_flags", args(enabled=True, beta=False, owner=None)),)),
    Captured("pythonic_plain_answer", "pythonic",
             "The weather in Paris is sunny, around 21°C.",
             "The weather in Paris is sunny, around 21°C.", ()),
    Captured("pythonic_citation_is_content", "pythonic",
             "[1] Smith, J. (2020). A study of things.",
             "[1] Smith, J. (2020). A study of things.", ()),
    Captured("pythonic_bracketed_note_is_content", "pythonic",
             "[Note: it's raining] Bring an umbrella, and your (blue) coat.",
             "[Note: it's raining] Bring an umbrella, and your (blue) coat.", ()),
    Captured("pythonic_markdown_link_is_content", "pythonic",
             "[the docs](https://example.com/docs) explain it.",
             "[the docs](https://example.com/docs) explain it.", ()),
    Captured("pythonic_call_followed_by_prose_is_content", "pythonic",
             '[get_time(tz="UTC")] is how you would ask for the time.',
             '[get_time(tz="UTC")] is how you would ask for the time.', ()),
    Captured("pythonic_non_literal_argument_is_content", "pythonic",
             "[get_weather(city=input())]", "[get_weather(city=input())]", ()),
    Captured("pythonic_positional_argument_is_content", "pythonic",
             '[get_weather("Paris")]', '[get_weather("Paris")]', ()),
    Captured("pythonic_empty_list_is_content", "pythonic", "[]", "[]", ()),
    # --- grammar-forced -------------------------------------------------------------------
    Captured("named_call_arguments", "named:get_weather",
             '  {"city": "Paris", "days": [1, 2], "note": "a } b"}\n',
             None, (("get_weather", '{"city": "Paris", "days": [1, 2], "note": "a } b"}'),)),
    Captured("required_two_calls", "required",
             '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", '
             '"parameters": {}}]',
             None, (("get_weather", '{"city": "Paris"}'), ("get_time", "{}"))),
    Captured("required_pretty_printed", "required",
             '\n[\n  {\n    "name": "get_weather",\n    "parameters": {"city": "Zürich \\"ZH\\""}'
             "\n  }\n]\n",
             None, (("get_weather", '{"city": "Zürich \\"ZH\\""}'),)),
]
CAPTURED_IDS = [captured.id for captured in CAPTURED]


def parser_for(captured: Captured) -> ToolCallParser:
    if captured.parser.startswith("named:"):
        return NamedCallParser(captured.parser.removeprefix("named:"))
    if captured.parser == "required":
        return RequiredCallsParser()
    return make_parser(captured.parser)


def run_stream(parser: ToolCallParser, pieces: list[str]) -> list:
    stream = parser.stream()
    deltas = []
    for piece in pieces:
        deltas += stream.push(piece)
    return deltas + stream.finish()


def assert_stream_agrees_with_extract(parser: ToolCallParser, text: str, pieces: list[str]):
    expected = parser.extract(text)
    deltas = run_stream(parser, pieces)
    content = "".join(delta.text for delta in deltas if isinstance(delta, ContentDelta))
    assert content == (expected.content or ""), pieces
    call_deltas = [delta for delta in deltas if isinstance(delta, ToolCallDelta)]
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for delta in call_deltas:
        if delta.index not in names:
            assert delta.index == len(names), f"call {delta.index} began out of order"
            assert delta.name is not None, "the first delta of a call must carry its name"
            names[delta.index], arguments[delta.index] = delta.name, ""
        else:
            assert delta.name is None, "only the first delta of a call carries the name"
        arguments[delta.index] += delta.arguments
    streamed = [(names[index], arguments[index]) for index in sorted(names)]
    assert streamed == [(call.name, call.arguments) for call in expected.calls], pieces


def two_piece_splits(text: str) -> list[list[str]]:
    return [[text[:cut], text[cut:]] for cut in range(len(text) + 1)]


SPLITTERS = {
    "one_piece": lambda text: [[text]],
    "two_pieces_cut_at_every_position": two_piece_splits,
    "one_character_at_a_time": lambda text: [list(text)],
    "word_like_pieces": lambda text: [re.findall(r"\w+|\s+|[^\w\s]", text)],
}


@pytest.mark.parametrize("captured", CAPTURED, ids=CAPTURED_IDS)
def test_extract_finds_the_content_and_calls_of_captured_output(captured):
    extracted = parser_for(captured).extract(captured.text)
    assert extracted.content == captured.content
    assert [(call.name, call.arguments) for call in extracted.calls] == list(captured.calls)
    for call in extracted.calls:
        assert isinstance(json.loads(call.arguments), dict)


@pytest.mark.parametrize("splitter", SPLITTERS.values(), ids=SPLITTERS.keys())
@pytest.mark.parametrize("captured", CAPTURED, ids=CAPTURED_IDS)
def test_stream_split_anywhere_reassembles_what_extract_finds(captured, splitter):
    parser = parser_for(captured)
    for pieces in splitter(captured.text):
        assert_stream_agrees_with_extract(parser, captured.text, pieces)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CAPTURED), st.lists(st.floats(0, 1), max_size=8))
def test_stream_cut_at_random_places_reassembles_what_extract_finds(captured, cut_fractions):
    text = captured.text
    cuts = sorted({int(fraction * len(text)) for fraction in cut_fractions})
    pieces = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)])]
    assert_stream_agrees_with_extract(parser_for(captured), text, pieces)


@pytest.mark.parametrize("captured", CAPTURED, ids=CAPTURED_IDS)
def test_stream_sends_no_empty_deltas_after_the_first_of_a_call(captured):
    deltas = run_stream(parser_for(captured), list(captured.text))
    for delta in deltas:
        if isinstance(delta, ContentDelta):
            assert delta.text
        elif delta.name is None:
            assert delta.arguments
