"""For the Responses API tests: an openai SDK client whose every HTTP answer is kept, raw,
so each payload and streamed event can be checked against OpenAI's own schemas."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

from tests.api.openai_schema import assert_matches

# each streamed event type -> its schema in OpenAI's spec
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
}


class RecordingTransport(httpx.BaseTransport):
    """Reads each answer whole (streams included) and keeps its body for checking."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.bodies: list[tuple[str, bytes]] = []  # (content type, body)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        body = response.read()
        self.bodies.append((response.headers.get("content-type", ""), body))
        return httpx.Response(response.status_code, headers=response.headers, content=body,
                              request=request)

    def close(self) -> None:
        self._inner.close()


def recording_client(*, base_url: str) -> tuple[openai.OpenAI, RecordingTransport]:
    transport = RecordingTransport()
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0,
                           timeout=120, http_client=httpx.Client(transport=transport))
    return client, transport


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The events of a Responses stream: `event: <type>` and `data: <json>` per frame, the
    type repeated in the data, and no [DONE] at the end."""
    events = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: "), frame
        data = json.loads(data_line[len("data: "):])
        assert data["type"] == event_line[len("event: "):]
        events.append(data)
    return events


def check_recorded(transport: RecordingTransport) -> list[dict[str, Any]]:
    """Check every recorded answer against OpenAI's schemas (then forget them); return the
    streamed events among them, in order."""
    streamed = []
    for content_type, body in transport.bodies:
        if content_type.startswith("text/event-stream"):
            events = sse_events(body)
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
            for event in events:
                assert_matches(event, EVENT_SCHEMAS[event["type"]])
                assert_matches(event, "ResponseStreamEvent")
            streamed += events
        elif json.loads(body).get("object") == "response" and "deleted" not in body.decode():
            assert_matches(json.loads(body), "Response")
    transport.bodies.clear()
    return streamed
