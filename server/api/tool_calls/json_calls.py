"""JSON call objects (`{"name": ..., "arguments": {...}}`) read whole, or as they stream in.

A call object must have exactly two keys: "name" (a non-empty string) and one of
"arguments"/"parameters" (an object). Being strict keeps a JSON answer such as
`{"name": "Ada", "age": 36}` from passing for a call. The arguments are reported as the exact
text the model wrote for that object, so streamed raw fragments concatenate to it.
"""

from __future__ import annotations

import json
import re
from typing import NoReturn

from server.api.tool_calls.base import ParsedToolCall, StreamStateMachine

ARGUMENT_KEYS = ("arguments", "parameters")
_JSON_SPACE_PATTERN = r"[ \t\n\r]*"
_JSON_SPACE = re.compile(_JSON_SPACE_PATTERN)


def _reject_non_finite(constant: str) -> NoReturn:
    # NaN and Infinity are Python's extension, not JSON: clients could not parse them.
    raise ValueError(f"{constant} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_non_finite)
_ARGUMENT_KEY_PATTERN = '"(?:' + "|".join(ARGUMENT_KEYS) + ')"'
# The start of a call object that names the function first, up to the "{" of its arguments.
_NAME_FIRST = re.compile(_JSON_SPACE_PATTERN.join([
    r"\{", r'"name"', ":", r'(?P<name>"(?:[^"\\]|\\.)*")', ",", _ARGUMENT_KEY_PATTERN, ":",
    r"\{"]), re.DOTALL)
_STRUCTURE_OUTSIDE_STRINGS = re.compile(r'[{}"]')
_STRUCTURE_INSIDE_STRINGS = re.compile(r'["\\]')


class NotACall(ValueError):
    """The text is valid JSON, but not the call (or arguments) object expected there."""


def skip_json_space(text: str, pos: int) -> int:
    return _JSON_SPACE.match(text, pos).end()


def read_object_members(text: str, pos: int) -> tuple[dict[str, tuple[object, int, int]], int]:
    """Read the JSON object at `pos`: {key: (value, value start, value end)} and its end.
    Raises ValueError when it is not a complete, valid object with distinct keys."""
    if not text.startswith("{", pos):
        raise ValueError("expected '{'")
    pos = skip_json_space(text, pos + 1)
    members: dict[str, tuple[object, int, int]] = {}
    if text.startswith("}", pos):
        return members, pos + 1
    while True:
        if not text.startswith('"', pos):
            raise ValueError("expected a key")
        key, pos = _DECODER.raw_decode(text, pos)
        pos = skip_json_space(text, pos)
        if not text.startswith(":", pos):
            raise ValueError("expected ':'")
        value_start = skip_json_space(text, pos + 1)
        value, pos = _DECODER.raw_decode(text, value_start)
        if key in members:
            raise ValueError(f"duplicate key {key!r}")
        members[key] = (value, value_start, pos)
        pos = skip_json_space(text, pos)
        if text.startswith("}", pos):
            return members, pos + 1
        if not text.startswith(",", pos):
            raise ValueError("expected ',' or '}'")
        pos = skip_json_space(text, pos + 1)


def read_call_object(text: str, pos: int) -> tuple[ParsedToolCall, int]:
    """Read the call object at `pos`; the call and where the object ends. ValueError if the
    object is not valid JSON or not a call (see the module docstring)."""
    members, end = read_object_members(text, pos)
    argument_keys = [key for key in members if key in ARGUMENT_KEYS]
    if len(argument_keys) != 1 or set(members) != {"name", argument_keys[0]}:
        raise NotACall(f"not a call object: keys {sorted(members)}")
    name = members["name"][0]
    arguments, arguments_start, arguments_end = members[argument_keys[0]]
    if not isinstance(name, str) or not name:
        raise NotACall("the function name must be a non-empty string")
    if not isinstance(arguments, dict):
        raise NotACall("the arguments must be a JSON object")
    return ParsedToolCall(name, text[arguments_start:arguments_end]), end


def read_call_array(text: str, pos: int) -> tuple[list[ParsedToolCall], int]:
    """Read a JSON array of call objects at `pos`; the calls and where the array ends."""
    if not text.startswith("[", pos):
        raise ValueError("expected '['")
    pos = skip_json_space(text, pos + 1)
    calls: list[ParsedToolCall] = []
    if text.startswith("]", pos):
        return calls, pos + 1
    while True:
        call, pos = read_call_object(text, pos)
        calls.append(call)
        pos = skip_json_space(text, pos)
        if text.startswith("]", pos):
            return calls, pos + 1
        if not text.startswith(",", pos):
            raise ValueError("expected ',' or ']'")
        pos = skip_json_space(text, pos + 1)


def read_arguments_object(text: str, pos: int) -> int:
    """Where the JSON object of arguments at `pos` ends; ValueError if it is not one."""
    if not text.startswith("{", pos):
        raise ValueError("expected '{'")
    return _DECODER.raw_decode(text, pos)[1]


class BraceMatcher:
    """Follows the brace depth of JSON text that starts with "{" as the text grows, ignoring
    braces inside strings, to find where the object ends. It also notes where the first
    nested object opens and closes: a name-first call object's arguments."""

    def __init__(self, start: int) -> None:
        self._scanned = start
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self.inner_open: int | None = None
        self.inner_close: int | None = None
        self.end: int | None = None

    def advance(self, text: str) -> int | None:
        """Scan the text added since the last call; return the object's end once known."""
        pos = self._scanned
        while pos < len(text) and self.end is None:
            if self._escaped:
                self._escaped, pos = False, pos + 1
            elif self._in_string:
                found = _STRUCTURE_INSIDE_STRINGS.search(text, pos)
                if found is None:
                    pos = len(text)
                    break
                pos = found.end()
                if found.group() == "\\":
                    self._escaped = True
                else:
                    self._in_string = False
            else:
                found = _STRUCTURE_OUTSIDE_STRINGS.search(text, pos)
                if found is None:
                    pos = len(text)
                    break
                pos = found.end()
                self._note(found.group(), found.start())
        self._scanned = pos
        return self.end

    def _note(self, char: str, at: int) -> None:
        if char == '"':
            self._in_string = True
        elif char == "{":
            self._depth += 1
            if self._depth == 2 and self.inner_open is None:
                self.inner_open = at
        else:
            self._depth -= 1
            if self._depth == 1 and self.inner_open is not None and self.inner_close is None:
                self.inner_close = at
            if self._depth == 0:
                self.end = at + 1


class CallObjectReader:
    """Reads one call object as it streams in. When the object names the function first, the
    name is known as soon as the arguments object opens, and the arguments text can be handed
    out as it grows; otherwise the call is only known once the object closes."""

    def __init__(self, start: int) -> None:
        self.start = start
        self._braces = BraceMatcher(start)
        self._checked_name_first = False
        self.name: str | None = None
        self.sent_upto = start
        self.end: int | None = None

    def advance(self, text: str) -> None:
        self.end = self._braces.advance(text)
        inner_open = self._braces.inner_open
        if self._checked_name_first or inner_open is None:
            return
        self._checked_name_first = True
        head = _NAME_FIRST.fullmatch(text, self.start, inner_open + 1)
        if head is None:
            return
        try:
            name = json.loads(head.group("name"))
        except ValueError:
            return
        if name:
            self.name, self.sent_upto = name, inner_open

    def take_arguments(self, text: str) -> str:
        """The arguments text that arrived since the last call (name-first objects only)."""
        inner_close = self._braces.inner_close
        stop = len(text) if inner_close is None else inner_close + 1
        fragment, self.sent_upto = text[self.sent_upto:stop], stop
        return fragment

    def parse(self, text: str) -> ParsedToolCall | None:
        """The finished object as a call; None when it is not a valid one."""
        try:
            call, end = read_call_object(text, self.start)
        except (ValueError, RecursionError):
            return None
        return call if end == self.end else None


class JsonCallStream(StreamStateMachine):
    """A stream for formats made of JSON call objects: reads one object at a time, and walks
    a JSON array of them (states "array_start" .. "array_end")."""

    def __init__(self) -> None:
        super().__init__()
        self._state = ""
        self._reader: CallObjectReader | None = None
        self._call_announced = False

    def _begin_call_object(self, start: int) -> None:
        self._reader = CallObjectReader(start)
        self._call_announced = False
        self._pos = start

    def _step_call_object(self) -> bool:
        """Feed the call object being read; True once it has closed as a valid call."""
        reader = self._reader
        reader.advance(self._text)
        if reader.name is not None:
            fragment = reader.take_arguments(self._text)
            if self._call_announced:
                self._send_arguments(fragment)
            else:
                self._start_call(reader.name, fragment)
                self._call_announced = True
            self._unsent = reader.sent_upto
        if reader.end is None:
            return False
        call = reader.parse(self._text)
        if call is None:
            self._treat_rest_as_content()
            return False
        if not self._call_announced:
            self._start_call(call.name, call.arguments)
        self._pos = self._unsent = reader.end
        self._reader = None
        return True

    def _step_call_array(self) -> bool:
        """One move through `[call, call, ...]`; `_pos` must be at the "[" to begin."""
        if self._state == "array_call":
            if not self._step_call_object():
                return False
            self._state = "array_after_call"
            return True
        at = skip_json_space(self._text, self._pos)
        if at == len(self._text):
            return False
        char, expected = self._text[at], _ARRAY_MOVES[self._state]
        if char not in expected:
            self._treat_rest_as_content()
            return False
        if char == "{":
            self._begin_call_object(at)
        else:
            self._pos = at + 1
        self._state = expected[char]
        return True

    def _array_ended(self) -> bool:
        """Whether the output may end here: the array closed, only whitespace after it."""
        return (self._state == "array_end"
                and skip_json_space(self._text, self._pos) == len(self._text))


# For each array state: the characters that may come next, and the state each one leads to.
_ARRAY_MOVES = {
    "array_start": {"[": "array_first"},
    "array_first": {"{": "array_call", "]": "array_end"},
    "array_next": {"{": "array_call"},
    "array_after_call": {",": "array_next", "]": "array_end"},
    "array_end": {},
}
