"""The hermes format (Qwen2.5, Hermes, and the daemon's fallback): calls in tag blocks.

    I'll look that up.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Content is the text outside the blocks. A "<tool_call>" not followed by "{" (after
whitespace) is prose that mentions the tag, and stays in the content. The final block may
lack its "</tool_call>" (models often stop right after the JSON), but only whitespace may then
follow the object.
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

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


class HermesToolCallParser(ToolCallParser):
    name: ClassVar[str] = "hermes"
    needs_special_tokens: ClassVar[bool] = False

    def extract(self, text: str) -> ExtractedToolCalls:
        """Content and calls; on malformed output, the whole text as content and no calls."""
        try:
            content, calls = _read_blocks(text)
        except (ValueError, RecursionError):
            return ExtractedToolCalls(content_or_none(text), ())
        return ExtractedToolCalls(content_or_none(content), tuple(calls))

    def stream(self) -> StreamingToolCallParser:
        return _HermesStream()

    def call_format(self) -> CallFormat:
        return CallFormat(trigger=OPEN_TAG, begin_before_name=OPEN_TAG + '\n{"name": "',
                          begin_after_name='", "arguments": ', end="}\n" + CLOSE_TAG,
                          name_in_json_string=True)


def _read_blocks(text: str) -> tuple[str, list[ParsedToolCall]]:
    """The text outside the blocks and the calls inside them; ValueError when malformed."""
    outside: list[str] = []
    calls: list[ParsedToolCall] = []
    pos = 0
    while (start := text.find(OPEN_TAG, pos)) != -1:
        outside.append(text[pos:start])
        body = skip_space(text, start + len(OPEN_TAG))
        if not text.startswith("{", body):
            outside.append(OPEN_TAG)
            pos = start + len(OPEN_TAG)
            continue
        call, end = read_call_object(text, body)
        calls.append(call)
        after = skip_space(text, end)
        if text.startswith(CLOSE_TAG, after):
            pos = after + len(CLOSE_TAG)
        elif after == len(text):
            pos = after
        else:
            raise ValueError(f"expected {CLOSE_TAG} after the call object")
    outside.append(text[pos:])
    return "".join(outside), calls


class _HermesStream(JsonCallStream):
    """States: "content" (looking for the open tag), "opened" (after it, waiting for "{"),
    "call" (reading the object), "closing" (waiting for the close tag)."""

    def __init__(self) -> None:
        super().__init__()
        self._state = "content"

    def _step(self) -> bool:
        if self._state == "content":
            if self._step_content_until(OPEN_TAG):
                self._state = "opened"
                return True
            return False
        if self._state == "opened":
            return self._step_opened()
        if self._state == "call":
            if self._step_call_object():
                self._state = "closing"
                return True
            return False
        return self._step_closing()

    def _step_opened(self) -> bool:
        body = skip_space(self._text, self._pos)
        if body == len(self._text):
            return False
        if self._text[body] == "{":
            self._begin_call_object(body)
            self._state = "call"
        else:
            # Prose that mentions the tag: it is content, and so is what follows.
            self._release_content_to(body)
            self._state = "content"
        return True

    def _step_closing(self) -> bool:
        after = self._step_expecting(CLOSE_TAG)
        if after is None:
            return False
        self._pos = self._unsent = after
        self._state = "content"
        return True

    def _at_end(self) -> None:
        if self._state == "opened":
            self._release_content_to(len(self._text))
        elif self._state == "call":
            self._treat_rest_as_content()
        # "closing" here means only whitespace followed the object: a final block without
        # its close tag, which counts. "content" has already released everything.
