"""A stream's chunk events as bytes: the fields every chunk repeats are encoded once, each
chunk encodes only its choices (msgspec), and the event is one concatenation.

Building three pydantic models per token and serialising them cost about 9 µs of the api
process's time per streamed token at 512 streams (bench/api_overhead.py); this writes the
same JSON, key for key and in the same order, in about a tenth of that.

    data: {"id":ID,"object":OBJ,"created":T,"model":M,"choices":[<choices>]<usage>}\\n\\n
    # | head: once per stream                          | per chunk  | tail: once  |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

_encode = msgspec.json.encode


class ChunkEvents:
    """Renders one stream's chunks (chat.completion.chunk or text_completion). With
    include_usage every chunk carries "usage": null and the last one the usage, as OpenAI
    streams them; without it no chunk has the key. With running_usage (vLLM's
    continuous_usage_stats) every chunk carries the usage so far instead of null."""

    def __init__(self, *, request_id: str, object_name: str, created: int, model: str,
                 include_usage: bool,
                 running_usage: Callable[[], dict[str, Any]] | None = None) -> None:
        head = _encode({"id": request_id, "object": object_name, "created": created,
                        "model": model})
        self._head = b"data: " + head[:-1] + b',"choices":'
        self._tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._running_usage = running_usage

    def event(self, choices: list[dict[str, Any]]) -> bytes:
        """The SSE event of a chunk with these choices (plain JSON-able dicts)."""
        if self._running_usage is not None:
            return (self._head + _encode(choices) + b',"usage":'
                    + _encode(self._running_usage()) + b"}\n\n")
        return self._head + _encode(choices) + self._tail

    def usage_event(self, usage: dict[str, Any]) -> bytes:
        """The final chunk: no choices, the request's usage."""
        return self._head + b'[],"usage":' + _encode(usage) + b"}\n\n"


def chat_choice(index: int, *, content: str | None = None, role: str | None = None,
                tool_calls: list[dict[str, Any]] | None = None,
                logprobs: dict[str, Any] | None = None,
                finish_reason: str | None = None) -> dict[str, Any]:
    """One choice of a chat chunk. Its delta holds only what changed: the role in a
    choice's first chunk, then content pieces or tool call deltas; the final chunk's delta
    is empty."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls:
        delta["tool_calls"] = tool_calls
    return {"index": index, "delta": delta, "logprobs": logprobs,
            "finish_reason": finish_reason}


def completion_choice(index: int, text: str, *, logprobs: dict[str, Any] | None = None,
                      finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
