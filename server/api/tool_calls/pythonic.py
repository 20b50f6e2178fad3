"""The pythonic format (Llama 3.2 and 4): the whole output is a Python list of calls.

    [get_weather(city="Paris", unit="c"), get_time(tz="CET")]

optionally wrapped in "<|python_start|>" ... "<|python_end|>". Arguments are keywords whose
values are literals (str, int, float, bool, None, lists, tuples, dicts with string keys, and
the JSON spellings true/false/null); they are reported as `json.dumps` of the keywords. The
text is parsed with `ast`, never evaluated. Any other output is content, all of it.

Streaming sends a call, name and arguments in one delta, once the "," after it arrives; the
last call waits for the end of the output, because text after the "]" makes the whole output
content after all.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import ClassVar

from server.api.tool_calls.base import (
    ExtractedToolCalls,
    ParsedToolCall,
    StreamingToolCallParser,
    StreamStateMachine,
    ToolCallParser,
    content_or_none,
    skip_space,
)

PYTHON_START = "<|python_start|>"
PYTHON_END = "<|python_end|>"
_JSON_SPELLINGS = {"true": True, "false": False, "null": None}
_CALLEE = re.compile(r"\s*[^\W\d][\w.]*")
_STRUCTURE_OUTSIDE_STRINGS = re.compile(r"""[()\[\]{},'"]""")
_STRUCTURE_INSIDE_STRINGS = {"'": re.compile(r"['\\]"), '"': re.compile(r'["\\]')}


class _NotALiteral(ValueError):
    pass


class PythonicToolCallParser(ToolCallParser):
    name: ClassVar[str] = "pythonic"
    needs_special_tokens: ClassVar[bool] = False

    def extract(self, text: str) -> ExtractedToolCalls:
        """The calls, or (anything but a list of calls) the whole text as content."""
        source = text.strip()
        if source.startswith(PYTHON_START):
            source = source[len(PYTHON_START):].lstrip()
        if source.endswith(PYTHON_END):
            source = source[:-len(PYTHON_END)].rstrip()
        calls = _parse_call_list(source) if source.startswith("[") else None
        if not calls:
            return ExtractedToolCalls(content_or_none(text), ())
        return ExtractedToolCalls(None, tuple(calls))

    def stream(self) -> StreamingToolCallParser:
        return _PythonicStream()


def _parse(source: str) -> ast.expr | None:
    try:
        return ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return None


def _parse_call_list(source: str) -> list[ParsedToolCall] | None:
    tree = _parse(source)
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    calls = [_call_from_node(element) for element in tree.elts]
    return None if None in calls else calls


def parse_call_source(source: str) -> ParsedToolCall | None:
    """One element of the list, on its own; parenthesized so that line breaks inside it
    mean what they mean inside the list."""
    return _call_from_node(_parse(f"(\n{source}\n)"))


def _call_from_node(node: ast.expr | None) -> ParsedToolCall | None:
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = _dotted_name(node.func)
    arguments: dict[str, object] = {}
    try:
        for keyword in node.keywords:
            if keyword.arg is None or keyword.arg in arguments:
                return None
            arguments[keyword.arg] = _literal_value(keyword.value)
    except (_NotALiteral, RecursionError):
        return None
    if name is None:
        return None
    return ParsedToolCall(name, json.dumps(arguments, ensure_ascii=False))


def _dotted_name(node: ast.expr) -> str | None:
    """`get_weather` or `brave_search.call`; None for any other callee."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted_name(node.value)
        return None if owner is None else f"{owner}.{node.attr}"
    return None


def _literal_value(node: ast.expr) -> object:
    """The JSON-ready value of a literal; raises _NotALiteral for anything else."""
    if isinstance(node, ast.Constant):
        return _checked_constant(node.value)
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) in (int, float)):
        value = _checked_constant(node.operand.value)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal_value(element) for element in node.elts]
    if isinstance(node, ast.Dict):
        result = {}
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise _NotALiteral("dict keys must be strings")
            result[key.value] = _literal_value(value)
        return result
    if isinstance(node, ast.Name) and node.id in _JSON_SPELLINGS:
        return _JSON_SPELLINGS[node.id]
    raise _NotALiteral(type(node).__name__)


def _checked_constant(value: object) -> object:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise _NotALiteral(repr(value))


def _callee_state(source: str) -> str:
    """How the start of the first element looks: "opened" (a callee and its "("), "maybe"
    (could still become that), or "no" (it cannot: say, "[1] Smith" or "[Note: ...")."""
    callee = _CALLEE.match(source)
    if callee is None:
        return "maybe" if not source.strip() else "no"
    rest = source[callee.end():].lstrip()
    if not rest:
        return "maybe"
    return "opened" if rest.startswith("(") else "no"


class _ListScanner:
    """Finds the top-level elements of a Python list as its text streams in: brackets count
    only outside string literals (either quote, or triple-quoted), and scanning can stop at
    any cut and resume."""

    def __init__(self, start: int) -> None:
        self._scanned = start
        self._depth = 0
        self._quote: str | None = None
        self._escaped = False
        self.element_start = start
        self.elements: list[tuple[int, int, bool]] = []   # (start, end, whether "]" ended it)
        self.closed_at: int | None = None
        self.broken = False

    def advance(self, text: str) -> None:
        pos = self._scanned
        while pos < len(text) and self.closed_at is None and not self.broken:
            if self._escaped:
                self._escaped, pos = False, pos + 1
                continue
            pattern = (_STRUCTURE_INSIDE_STRINGS[self._quote[0]] if self._quote
                       else _STRUCTURE_OUTSIDE_STRINGS)
            found = pattern.search(text, pos)
            if found is None:
                pos = len(text)
                break
            at = found.start()
            resume = self._in_string(text, at) if self._quote else self._outside(text, at)
            if resume is None:
                pos = at   # a run of quotes at the very end: the next piece tells which
                break
            pos = resume
        self._scanned = pos

    def _in_string(self, text: str, at: int) -> int | None:
        if text[at] == "\\":
            self._escaped = True
            return at + 1
        quote = self._quote
        if len(quote) == 1 or text.startswith(quote, at):
            self._quote = None
            return at + len(quote)
        return None if quote.startswith(text[at:]) else at + 1

    def _outside(self, text: str, at: int) -> int | None:
        char = text[at]
        if char in "'\"":
            if text.startswith(char * 3, at):
                self._quote = char * 3
                return at + 3
            if (char * 3).startswith(text[at:]):
                return None
            self._quote = char
        elif char in "([{":
            self._depth += 1
        elif char in ")}":
            self._depth -= 1
            self.broken = self._depth < 0
        elif char == "]" and self._depth > 0:
            self._depth -= 1
        elif self._depth == 0:   # the list's own "," or "]"
            self.elements.append((self.element_start, at, char == "]"))
            self.element_start = at + 1
            if char == "]":
                self.closed_at = at + 1
        return at + 1


class _PythonicStream(StreamStateMachine):
    """States: "start" (is it a list?), "list" (reading elements), "after_list"."""

    def __init__(self) -> None:
        super().__init__()
        self._state = "start"
        self._scanner = _ListScanner(0)
        self._calls_read = 0
        self._first_element_looks_like_a_call = False
        self._last_call: ParsedToolCall | None = None

    def _step(self) -> bool:
        if self._state == "start":
            return self._step_start()
        if self._state == "list":
            return self._step_list()
        at = skip_space(self._text, self._pos)
        if at == len(self._text):
            return False
        ended = self._literal_at(at, PYTHON_END)
        if ended is None:
            return False
        if not ended or skip_space(self._text, at + len(PYTHON_END)) != len(self._text):
            self._treat_rest_as_content()
        return False

    def _step_start(self) -> bool:
        at = skip_space(self._text, 0)
        if at == len(self._text):
            return False
        wrapped = self._literal_at(at, PYTHON_START)
        if wrapped is None:
            return False
        if wrapped:
            at = skip_space(self._text, at + len(PYTHON_START))
            if at == len(self._text):
                return False
        if self._text[at] != "[":
            self._treat_rest_as_content()
            return False
        self._scanner = _ListScanner(at + 1)
        self._state = "list"
        return True

    def _step_list(self) -> bool:
        scanner = self._scanner
        scanner.advance(self._text)
        for start, end, closes in scanner.elements:
            if not self._accept_element(self._text[start:end], end, closes):
                return False
        scanner.elements.clear()
        if scanner.broken:
            self._treat_rest_as_content()
            return False
        if scanner.closed_at is not None:
            self._pos = scanner.closed_at
            self._state = "after_list"
            return True
        if not self._first_element_looks_like_a_call:
            # Tell an answer that merely starts with "[" early, not at its end.
            looks = _callee_state(self._text[scanner.element_start:])
            if looks == "no":
                self._treat_rest_as_content()
            self._first_element_looks_like_a_call = looks == "opened"
        return False

    def _accept_element(self, source: str, end: int, closes: bool) -> bool:
        self._first_element_looks_like_a_call = True
        if not source.strip():
            # Only a trailing comma leaves an empty element: "[f(x=1), ]".
            if closes and self._calls_read:
                return True
            self._treat_rest_as_content()
            return False
        call = parse_call_source(source)
        if call is None:
            self._treat_rest_as_content()
            return False
        self._calls_read += 1
        if closes:
            self._last_call = call
        else:
            self._start_call(call.name, call.arguments)
            self._unsent = end + 1
        return True

    def _at_end(self) -> None:
        if self._state != "after_list":
            self._treat_rest_as_content()
        elif self._last_call is not None:
            self._start_call(self._last_call.name, self._last_call.arguments)
