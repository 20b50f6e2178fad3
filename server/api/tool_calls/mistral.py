"""The Mistral formats: "[TOOL_CALLS]" then the calls, in one of two spellings.

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]     (older models)
    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}  (newer)

Text before the first "[TOOL_CALLS]" is content; after it, only calls and whitespace.
"""

from __future__ import annotations

import re
from typing import ClassVar

from server.api.tool_calls.base import (
    CallFormat,
    ExtractedToolCalls,
    ParsedToolCall,
    StreamingToolCallParser,
    ToolCallParser,
    content_or_none,
    partial_marker_suffix,
    skip_space,
)
from server.api.tool_calls.json_calls import (
    BraceMatcher,
    JsonCallStream,
    read_arguments_object,
    read_call_array,
    skip_json_space,
)

CALLS_MARKER = "[TOOL_CALLS]"
ARGS_MARKER = "[ARGS]"
_FUNCTION_NAME = re.compile(r"[\w.\-]+")
_FUNCTION_NAME_SO_FAR = re.compile(r"[\w.\-]*")


class MistralToolCallParser(ToolCallParser):
    name: ClassVar[str] = "mistral"
    needs_special_tokens: ClassVar[bool] = True

    def extract(self, text: str) -> ExtractedToolCalls:
        """Content and calls; on malformed output, the whole text as content and no calls."""
        marker_at = text.find(CALLS_MARKER)
        if marker_at == -1:
            return ExtractedToolCalls(content_or_none(text), ())
        try:
            calls = _read_calls(text, marker_at + len(CALLS_MARKER))
        except (ValueError, RecursionError):
            return ExtractedToolCalls(content_or_none(text), ())
        return ExtractedToolCalls(content_or_none(text[:marker_at]), tuple(calls))

    def stream(self) -> StreamingToolCallParser:
        return _MistralStream()

    def call_format(self) -> CallFormat:
        return CallFormat(trigger=CALLS_MARKER, begin_before_name=CALLS_MARKER,
                          begin_after_name=ARGS_MARKER, end="")


def _read_calls(text: str, pos: int) -> list[ParsedToolCall]:
    """The calls after the first marker (ending at `pos`); ValueError when malformed."""
    pos = skip_space(text, pos)
    if text.startswith("[", pos):
        calls, end = read_call_array(text, pos)
        if skip_json_space(text, end) != len(text):
            raise ValueError("text after the array of calls")
        return calls
    calls = []
    while True:
        name_end = text.find(ARGS_MARKER, pos)
        if name_end == -1 or not _FUNCTION_NAME.fullmatch(text, pos, name_end):
            raise ValueError(f"expected a function name and {ARGS_MARKER}")
        arguments_start = skip_space(text, name_end + len(ARGS_MARKER))
        arguments_end = read_arguments_object(text, arguments_start)
        calls.append(ParsedToolCall(text[pos:name_end], text[arguments_start:arguments_end]))
        pos = skip_space(text, arguments_end)
        if pos == len(text):
            return calls
        if not text.startswith(CALLS_MARKER, pos):
            raise ValueError(f"expected {CALLS_MARKER} or the end")
        pos = skip_space(text, pos + len(CALLS_MARKER))


class _MistralStream(JsonCallStream):
    """States: "content", "marker" (after the first marker: which spelling?), then either
    the array states, or "name" -> "arguments_start" -> "arguments" -> "after_arguments"."""

    def __init__(self) -> None:
        super().__init__()
        self._state = "content"
        self._function_name = ""
        self._arguments: BraceMatcher | None = None
        self._arguments_start = 0

    def _step(self) -> bool:
        state = self._state
        if state == "content":
            if self._step_content_until(CALLS_MARKER):
                self._state = "marker"
                return True
            return False
        if state == "marker":
            at = skip_space(self._text, self._pos)
            if at == len(self._text):
                return False
            self._pos = at
            self._state = "array_start" if self._text[at] == "[" else "name"
            return True
        if state == "name":
            return self._step_name()
        if state == "arguments_start":
            return self._step_arguments_start()
        if state == "arguments":
            return self._step_arguments()
        if state == "after_arguments":
            return self._step_after_arguments()
        return self._step_call_array()

    def _step_name(self) -> bool:
        start = skip_space(self._text, self._pos)
        name_end = self._text.find(ARGS_MARKER, start)
        if name_end == -1:
            held = partial_marker_suffix(self._text, ARGS_MARKER, start)
            if not _FUNCTION_NAME_SO_FAR.fullmatch(self._text, start, len(self._text) - held):
                self._treat_rest_as_content()
            return False
        if not _FUNCTION_NAME.fullmatch(self._text, start, name_end):
            self._treat_rest_as_content()
            return False
        self._function_name = self._text[start:name_end]
        self._pos = name_end + len(ARGS_MARKER)
        self._state = "arguments_start"
        return True

    def _step_arguments_start(self) -> bool:
        at = skip_space(self._text, self._pos)
        if at == len(self._text):
            return False
        if self._text[at] != "{":
            self._treat_rest_as_content()
            return False
        self._arguments = BraceMatcher(at)
        self._pos = self._arguments_start = at
        self._state = "arguments"
        self._start_call(self._function_name, "")
        self._unsent = at
        return True

    def _step_arguments(self) -> bool:
        end = self._arguments.advance(self._text)
        stop = len(self._text) if end is None else end
        self._send_arguments(self._text[self._unsent:stop])
        self._unsent = stop
        if end is None:
            return False
        try:
            valid = read_arguments_object(self._text, self._arguments_start) == end
        except (ValueError, RecursionError):
            valid = False
        if not valid:
            self._treat_rest_as_content()
            return False
        self._pos = end
        self._state = "after_arguments"
        return True

    def _step_after_arguments(self) -> bool:
        after = self._step_expecting(CALLS_MARKER)
        if after is None:
            return False
        self._pos = after
        self._state = "name"
        return True

    def _at_end(self) -> None:
        if self._state == "after_arguments" or self._array_ended():
            return
        if self._state != "content":
            self._treat_rest_as_content()
