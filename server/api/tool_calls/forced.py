"""Parsers for output whose shape a grammar enforced, so there is never content.

- `NamedCallParser(name)` (tool_choice naming one function): the whole output is that
  function's arguments object.
- `RequiredCallsParser()` (tool_choice "required"): the whole output is a JSON array
  `[{"name": "f", "parameters": {...}}, ...]`.

The grammar guarantees the shape, except when the output was cut short (the length limit):
then the calls are reported as far as they were written, the last one's arguments unfinished,
as OpenAI does. Leading and trailing whitespace around the named call's object is dropped.
"""

from __future__ import annotations

from typing import ClassVar

from server.api.tool_calls.base import (
    ExtractedToolCalls,
    ParsedToolCall,
    StreamDelta,
    StreamingToolCallParser,
    ToolCallDelta,
    ToolCallParser,
    WhitespaceTrimmer,
    assemble_deltas,
)
from server.api.tool_calls.json_calls import (
    JsonCallStream,
    read_call_array,
    skip_json_space,
)


class NamedCallParser(ToolCallParser):
    name: ClassVar[str] = "named"

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name

    def extract(self, text: str) -> ExtractedToolCalls:
        return ExtractedToolCalls(None, (ParsedToolCall(self.function_name, text.strip()),))

    def stream(self) -> StreamingToolCallParser:
        return _NamedCallStream(self.function_name)


class _NamedCallStream(StreamingToolCallParser):
    """The first delta names the function (as soon as any text arrives); every piece after
    that is an arguments fragment."""

    def __init__(self, function_name: str) -> None:
        self._function_name = function_name
        self._announced = False
        self._trimmer = WhitespaceTrimmer()

    def push(self, text: str) -> list[StreamDelta]:
        return self._send(self._trimmer.push(text))

    def finish(self) -> list[StreamDelta]:
        return self._send("")

    def _send(self, fragment: str) -> list[StreamDelta]:
        if self._announced:
            return [ToolCallDelta(0, None, fragment)] if fragment else []
        self._announced = True
        return [ToolCallDelta(0, self._function_name, fragment)]


class RequiredCallsParser(ToolCallParser):
    name: ClassVar[str] = "required"

    def extract(self, text: str) -> ExtractedToolCalls:
        try:
            calls, end = read_call_array(text, skip_json_space(text, 0))
            if skip_json_space(text, end) == len(text):
                return ExtractedToolCalls(None, tuple(calls))
        except (ValueError, RecursionError):
            pass
        # Cut short: what the stream would have sent is what there is to report.
        stream = self.stream()
        return assemble_deltas([*stream.push(text), *stream.finish()])

    def stream(self) -> StreamingToolCallParser:
        return _RequiredCallsStream()


class _RequiredCallsStream(JsonCallStream):
    """The array states of JsonCallStream, from the first "[" to the last "]"."""
    _malformed_text_is_content: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._state = "array_start"

    def _step(self) -> bool:
        return self._step_call_array()

    def _at_end(self) -> None:
        if not self._array_ended():
            self._treat_rest_as_content()
