"""The Response object and its output items, in OpenAI's shape (plain dicts, checked
against OpenAI's schemas in the API tests)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from server.api.generation import Usage
from server.api.responses import ChatMessageOut
from server.api.responses_api.request import ResponsesRequest

# How a generation's finish reason ends a response: (status, incomplete reason).
# An aborted generation (the server is shutting down) fails.
_ENDINGS = {"stop": ("completed", None), "tool_calls": ("completed", None),
            "length": ("incomplete", "max_output_tokens")}


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ResponseContext:
    """What every version of one response (created, in progress, done) repeats."""

    response_id: str
    created_at: int
    model: str
    body: ResponsesRequest

    def response(self, *, status: str, output: list[dict[str, Any]],
                 usage: Usage | None = None, incomplete_reason: str | None = None,
                 error: dict[str, str] | None = None) -> dict[str, Any]:
        body = self.body
        done = status == "completed"
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at,
            "status": status, "completed_at": int(time.time()) if done else None,
            "background": False, "error": error,
            "incomplete_details": ({"reason": incomplete_reason}
                                   if incomplete_reason is not None else None),
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "model": self.model, "output": output,
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id, "reasoning": None,
            "store": body.store, "temperature": 1.0 if body.temperature is None
            else body.temperature, "top_p": 1.0 if body.top_p is None else body.top_p,
            "text": {"format": _text_format(body)}, "tool_choice": _tool_choice(body),
            "tools": [_tool(tool) for tool in body.function_tools()],
            "truncation": "disabled", "metadata": body.metadata or {},
            # usage only once known: OpenAI's schema has no null for it
            **({"usage": usage_object(usage)} if usage is not None else {}),
            **({"user": body.user} if body.user is not None else {})}


def ending(finish_reason: str | None) -> tuple[str, str | None]:
    """(status, incomplete reason) for a generation's finish reason."""
    return _ENDINGS.get(finish_reason or "", ("failed", None))


def usage_object(usage: Usage) -> dict[str, Any]:
    # every prompt token not found in the prefix cache was computed and written to it
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": usage.prompt_tokens
                                     - usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens}


def message_item(item_id: str, text: str, *, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [text_part(text)]}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, *, call_id: str, name: str, arguments: str,
              status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def output_items(message: ChatMessageOut, *, status: str) -> list[dict[str, Any]]:
    """A whole answer as output items: its text (if any) as a message, then its calls."""
    items = []
    if message.content:
        items.append(message_item(new_item_id("msg"), message.content, status=status))
    for call in message.tool_calls or ():
        items.append(call_item(new_item_id("fc"), call_id=call.id, name=call.function.name,
                               arguments=call.function.arguments, status="completed"))
    return items


def _text_format(body: ResponsesRequest) -> dict[str, Any]:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return {"type": "text"}
    if fmt.type == "json_object":
        return {"type": "json_object"}
    out = {"type": "json_schema", "name": fmt.name, "schema": fmt.json_schema,
           "strict": bool(fmt.strict)}
    if fmt.description is not None:
        out["description"] = fmt.description
    return out


def _tool_choice(body: ResponsesRequest) -> str | dict[str, Any]:
    choice = body.tool_choice
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    return {"type": "function", "name": choice["name"]}


def _tool(tool) -> dict[str, Any]:
    out = {"type": "function", "name": tool.name, "parameters": tool.parameters,
           "strict": bool(tool.strict)}
    if tool.description is not None:
        out["description"] = tool.description
    return out
