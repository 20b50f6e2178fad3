"""A choice's text as OpenAI's tool-call fields: the whole message for a plain answer, and
per-step deltas for a stream (a call's first delta carries index, id, type and name; later
ones carry fragments of its arguments)."""

from __future__ import annotations

import json
import secrets
import string
import uuid

from server.api.responses import (ChatMessageOut, FunctionCallDelta, FunctionCallOut,
                                  ToolCallDeltaOut, ToolCallOut)
from server.api.tool_calls.base import ContentDelta, ToolCallDelta
from server.api.tool_calls.plan import ToolPlan

_ALPHANUMERIC = string.ascii_letters + string.digits


def new_tool_call_id(parser_name: str | None) -> str:
    """OpenAI-style ids; Mistral's templates insist on nine alphanumerics."""
    if parser_name == "mistral":
        return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))
    return f"call_{uuid.uuid4().hex[:24]}"


def _parser_name(plan: ToolPlan) -> str | None:
    return getattr(plan.parser, "name", None)


def tool_message(plan: ToolPlan, text: str, finish_reason: str | None
                 ) -> tuple[ChatMessageOut, str | None]:
    """The assistant message and finish reason of a whole choice."""
    if plan.parser is None:
        return ChatMessageOut(content=text), finish_reason
    extracted = plan.parser.extract(text)
    # a call cut off at max_tokens has unfinished arguments: it is left out
    calls = [c for c in extracted.calls if _is_json_object(c.arguments)]
    calls = calls if plan.parallel else calls[:1]
    if not calls:
        return ChatMessageOut(content=text), finish_reason
    tool_calls = [ToolCallOut(id=new_tool_call_id(_parser_name(plan)),
                              function=FunctionCallOut(name=c.name, arguments=c.arguments))
                  for c in calls]
    if finish_reason == "stop":
        finish_reason = plan.calls_finish_reason
    return ChatMessageOut(content=extracted.content, tool_calls=tool_calls), finish_reason


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class ToolCallStreamer:
    """One streamed choice: text deltas in, content and tool-call deltas out."""

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._parser = plan.parser.stream()
        self._ids: list[str] = []

    @property
    def num_calls(self) -> int:
        return len(self._ids)

    def push(self, text: str, *, final: bool) -> tuple[str, list[ToolCallDeltaOut]]:
        """(content, tool-call deltas) for a step's text; final: the choice ended."""
        events = self._parser.push(text) if text else []
        if final:
            events += self._parser.finish()
        content: list[str] = []
        calls: list[ToolCallDeltaOut] = []
        for event in events:
            if isinstance(event, ContentDelta):
                content.append(event.text)
            elif isinstance(event, ToolCallDelta) and (self._plan.parallel or event.index == 0):
                calls.append(self._delta(event))
        return "".join(content), calls

    def finish_reason(self, finish_reason: str | None) -> str | None:
        if finish_reason == "stop" and self._ids:
            return self._plan.calls_finish_reason
        return finish_reason

    def _delta(self, event: ToolCallDelta) -> ToolCallDeltaOut:
        if event.index >= len(self._ids):  # the call's first delta
            self._ids.append(new_tool_call_id(_parser_name(self._plan)))
            return ToolCallDeltaOut(index=event.index, id=self._ids[event.index],
                                    type="function",
                                    function=FunctionCallDelta(name=event.name,
                                                               arguments=event.arguments))
        return ToolCallDeltaOut(index=event.index,
                                function=FunctionCallDelta(arguments=event.arguments))
