"""The Llama 3.1+ JSON format: the whole output is one or more call objects.

    <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}

The "<|python_tag|>" is optional; several objects are separated by ";" (or just whitespace).
An output that does not start (after whitespace) with "{" or the tag is plain content, and so
is one that starts that way but is not a list of calls (say, a JSON answer the user asked
for). There is never content next to calls.
"""

from __future__ import annotations

from typing import ClassVar

from server.api.tool_calls.base import (
    CallFormat,
    ExtractedToolCalls,
    ParsedToolCall,
    StreamingToolCallParser,
    ToolCallParser,
    content_or_none,
    skip_space,
)
from server.api.tool_calls.json_calls import JsonCallStream, read_call_object

PYTHON_TAG = "<|python_tag|>"
SEPARATOR = ";"


class Llama3JsonToolCallParser(ToolCallParser):
    name: ClassVar[str] = "llama3_json"
    needs_special_tokens: ClassVar[bool] = True

    def extract(self, text: str) -> ExtractedToolCalls:
        """The calls, or (plain or malformed output) the whole text as content."""
        try:
            calls = _read_calls(text)
        except (ValueError, RecursionError):
            calls = []
        if not calls:
            return ExtractedToolCalls(content_or_none(text), ())
        return ExtractedToolCalls(None, tuple(calls))

    def stream(self) -> StreamingToolCallParser:
        return _Llama3JsonStream()

    def call_format(self) -> CallFormat:
        return CallFormat(trigger='{"name": ', begin_before_name='{"name": "',
                          begin_after_name='", "parameters": ', end="}",
                          name_in_json_string=True)


def _read_calls(text: str) -> list[ParsedToolCall]:
    """The calls; [] for plain content, ValueError when it starts like calls but is not."""
    pos = skip_space(text, 0)
    if text.startswith(PYTHON_TAG, pos):
        pos = skip_space(text, pos + len(PYTHON_TAG))
    elif not text.startswith("{", pos):
        return []
    calls: list[ParsedToolCall] = []
    while True:
        call, end = read_call_object(text, pos)
        calls.append(call)
        pos = skip_space(text, end)
        if text.startswith(SEPARATOR, pos):
            pos = skip_space(text, pos + len(SEPARATOR))
        elif not text.startswith("{", pos) and pos != len(text):
            raise ValueError("expected ';' or another call object")
        if pos == len(text):
            return calls


class _Llama3JsonStream(JsonCallStream):
    """States: "start" (deciding between calls and plain content), "call" (reading an
    object), "between" (after an object: ";", "{" or the end), "next" (after ";")."""

    def __init__(self) -> None:
        super().__init__()
        self._state = "start"

    def _step(self) -> bool:
        if self._state == "start":
            return self._step_start()
        if self._state == "call":
            if self._step_call_object():
                self._state = "between"
                return True
            return False
        at = skip_space(self._text, self._pos)
        if at == len(self._text):
            return False
        char = self._text[at]
        if char == SEPARATOR and self._state == "between":
            self._pos = at + 1
            self._state = "next"
        elif char == "{":
            self._begin_call_object(at)
            self._state = "call"
        else:
            self._treat_rest_as_content()
            return False
        return True

    def _step_start(self) -> bool:
        at = skip_space(self._text, 0)
        if at == len(self._text):
            return False
        tagged = self._literal_at(at, PYTHON_TAG)
        if tagged is None:
            return False
        if tagged:
            at = skip_space(self._text, at + len(PYTHON_TAG))
            if at == len(self._text):
                return False
        if self._text[at] != "{":
            self._treat_rest_as_content()
            return False
        self._begin_call_object(at)
        self._state = "call"
        return True

    def _at_end(self) -> None:
        if self._state not in ("between", "next"):
            self._treat_rest_as_content()
