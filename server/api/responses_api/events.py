"""A streamed response as the Responses API's semantic events, numbered in order:

    response.created, response.in_progress
    per text run:  output_item.added (message), content_part.added,
                   output_text.delta ..., output_text.done, content_part.done,
                   output_item.done
    per call:      output_item.added (function_call), function_call_arguments.delta ...,
                   function_call_arguments.done, output_item.done
    response.completed (or response.incomplete at max_output_tokens, response.failed)

Each is framed as `event: <type>` + `data: <json>`; the stream ends after the last one
(the Responses API sends no [DONE]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from server.api.generation import Usage
from server.api.responses import ToolCallDeltaOut
from server.api.responses_api.objects import (ResponseContext, call_item, ending,
                                              message_item, new_item_id, text_part)


@dataclass
class _OpenItem:
    item_id: str
    kind: str  # "message" or "function_call"
    text: list[str] = field(default_factory=list)  # the text, or the call's arguments
    call_id: str = ""
    name: str = ""


class ResponseEvents:
    """The events of one streamed response; each method returns the events to send."""

    def __init__(self, context: ResponseContext) -> None:
        self._context = context
        self._sequence = 0
        self.output: list[dict[str, Any]] = []  # finished items
        self._open: _OpenItem | None = None
        self.final: dict[str, Any] | None = None  # the finished Response object

    def start(self) -> list[bytes]:
        response = self._context.response(status="in_progress", output=[])
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]

    def text(self, content: str) -> list[bytes]:
        events = []
        if self._open is not None and self._open.kind != "message":
            events += self._close(status="completed")
        if self._open is None:
            self._open = _OpenItem(new_item_id("msg"), "message")
            item = message_item(self._open.item_id, "", status="in_progress")
            item["content"] = []
            events += [self._event("response.output_item.added", output_index=self._index,
                                   item=item),
                       self._event("response.content_part.added", **self._where(),
                                   part=text_part(""))]
        self._open.text.append(content)
        events.append(self._event("response.output_text.delta", **self._where(),
                                  delta=content, logprobs=[]))
        return events

    def call(self, delta: ToolCallDeltaOut) -> list[bytes]:
        events = []
        if delta.id is not None:  # a call's first delta: a new item
            if self._open is not None:
                events += self._close(status="completed")
            self._open = _OpenItem(new_item_id("fc"), "function_call", call_id=delta.id,
                                   name=delta.function.name or "")
            events.append(self._event("response.output_item.added", output_index=self._index,
                                      item=self._call_item("", status="in_progress")))
        arguments = delta.function.arguments if delta.function is not None else None
        if arguments and self._open is not None:
            self._open.text.append(arguments)
            events.append(self._event("response.function_call_arguments.delta",
                                      item_id=self._open.item_id, output_index=self._index,
                                      delta=arguments))
        return events

    def finish(self, finish_reason: str | None, usage: Usage) -> list[bytes]:
        status, reason = ending(finish_reason)
        error = None
        if status == "failed":
            error = {"code": "server_error",
                     "message": "the generation was aborted (the server is shutting down)"}
        events = self._close(status="incomplete" if reason else "completed")
        self.final = self._context.response(status=status, output=self.output, usage=usage,
                                            incomplete_reason=reason, error=error)
        kind = {"completed": "response.completed",
                "incomplete": "response.incomplete"}.get(status, "response.failed")
        return events + [self._event(kind, response=self.final)]

    def fail(self, message: str) -> list[bytes]:
        """An error after the stream began: the response fails with it."""
        events = self._close(status="incomplete")
        response = self._context.response(status="failed", output=self.output,
                                          error={"code": "server_error", "message": message})
        return events + [self._event("response.failed", response=response)]

    @property
    def _index(self) -> int:
        return len(self.output)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._open.item_id, "output_index": self._index,
                "content_index": 0}

    def _call_item(self, arguments: str, *, status: str) -> dict[str, Any]:
        return call_item(self._open.item_id, call_id=self._open.call_id,
                         name=self._open.name, arguments=arguments, status=status)

    def _close(self, *, status: str) -> list[bytes]:
        open_item = self._open
        if open_item is None:
            return []
        text = "".join(open_item.text)
        if open_item.kind == "message":
            item = message_item(open_item.item_id, text, status=status)
            events = [self._event("response.output_text.done", **self._where(), text=text,
                                  logprobs=[]),
                      self._event("response.content_part.done", **self._where(),
                                  part=text_part(text))]
        else:
            item = self._call_item(text, status="completed")
            events = [self._event("response.function_call_arguments.done",
                                  item_id=open_item.item_id, output_index=self._index,
                                  name=open_item.name, arguments=text)]
        events.append(self._event("response.output_item.done", output_index=self._index,
                                  item=item))
        self.output.append(item)
        self._open = None
        return events

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {payload}\n\n".encode()
