"""Shared helpers for the api tests: SSE reading, request bodies, waiting on engine stats."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.api.openai_schema import COMPLETION_CHUNK, assert_matches

CHAT_CHUNK = "CreateChatCompletionStreamResponse"
# The shared daemon runs at most this many requests at once, so tests can also see
# requests wait in the queue.
MAX_NUM_SEQS = 16


def chat_body(content: str, **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **fields}


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of a complete SSE body, checking its framing and the final [DONE]."""
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"" and frames[-2] == b"data: [DONE]"
    events = []
    for frame in frames[:-2]:
        assert frame.startswith(b"data: "), frame
        events.append(json.loads(frame[len(b"data: "):]))
    return events


def stream_events(http: httpx.Client, path: str, body: dict[str, Any], *,
                  schema: str | None = None) -> list[dict[str, Any]]:
    """POST a streamed request; return its events, each checked against OpenAI's schema
    (the path's chunk schema, unless `schema` names another)."""
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        raw = response.read()
    assert response.status_code == 200, raw
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(raw)
    if schema is None:
        schema = CHAT_CHUNK if path.endswith("chat/completions") else COMPLETION_CHUNK
    for event in events:
        assert_matches(event, schema)
    return events


def streamed_texts(events: list[dict[str, Any]]) -> dict[int, str]:
    """Each choice's text, joined from its chunks (chat deltas or completion texts)."""
    texts: dict[int, str] = {}
    for event in events:
        for choice in event["choices"]:
            piece = choice["delta"].get("content") if "delta" in choice else choice["text"]
            texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
    return texts


def finish_reasons(events: list[dict[str, Any]]) -> dict[int, str]:
    return {c["index"]: c["finish_reason"] for e in events for c in e["choices"]
            if c["finish_reason"] is not None}


def wait_until_idle(base_url: str, *, timeout_s: float) -> dict[str, Any]:
    """Poll the engine's stats until no request runs or waits and no block is held by one;
    return the last stats (the caller asserts on them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = httpx.get(f"{base_url}/v1/engine/stats", timeout=10).json()
        idle = (stats["num_running"] == 0 and stats["num_waiting"] == 0
                and stats["num_used_blocks"] == 0)
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)
