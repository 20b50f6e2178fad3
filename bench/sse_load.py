"""A lean load generator for bench/api_overhead.py: many concurrent streamed requests over raw
asyncio sockets, counting SSE events and timing the gaps between the reads that bring them.

It parses no JSON and keeps one small buffer per stream, so the client costs little next to
the api process it loads (both share the machine's cores).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

CONNECT_AT_ONCE = 128  # more simultaneous connects overflow the server's accept backlog


@dataclass
class StreamResult:
    num_events: int = 0  # SSE events, [DONE] included
    complete: bool = False  # ended with data: [DONE]
    gaps_s: list[float] = field(default_factory=list)  # between reads that brought events
    first_event_s: float | None = None  # from sending the request


@dataclass
class LoadResult:
    streams: list[StreamResult]
    wall_s: float

    @property
    def num_complete(self) -> int:
        return sum(s.complete for s in self.streams)

    @property
    def num_events(self) -> int:
        return sum(s.num_events for s in self.streams)

    def gap_percentiles(self, *quantiles: float) -> list[float]:
        gaps = sorted(g for s in self.streams for g in s.gaps_s)
        if not gaps:
            return [0.0 for _ in quantiles]
        return [gaps[min(len(gaps) - 1, int(q * len(gaps)))] for q in quantiles]


def request_bytes(path: str, body: dict, port: int) -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            f"Connection: close\r\n\r\n")
    return head.encode() + payload


async def _one_stream(port: int, request: bytes, connect_gate: asyncio.Semaphore,
                      connected: asyncio.Queue, start: asyncio.Event) -> StreamResult:
    result = StreamResult()
    async with connect_gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connected.put_nowait(None)
    await start.wait()  # every stream starts together: the burst the api must serve
    sent_at = last = time.monotonic()
    writer.write(request)
    carry = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.monotonic()
            window = carry + data
            events = window.count(b"\n\n") - carry.count(b"\n\n")
            carry = window[-16:]
            if events:
                if result.first_event_s is None:
                    result.first_event_s = now - sent_at
                else:
                    result.gaps_s.append(now - last)
                last = now
                result.num_events += events
            if b"data: [DONE]\n\n" in window:
                result.complete = True
                break
    finally:
        writer.close()
    return result


async def run_load(*, port: int, path: str, bodies: list[dict]) -> LoadResult:
    """Open one connection per body, then send every request at once and read every
    stream to its end."""
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    connected: asyncio.Queue = asyncio.Queue()
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one_stream(port, request_bytes(path, body, port), gate,
                                             connected, start)) for body in bodies]
    for _ in tasks:
        getter = asyncio.ensure_future(connected.get())
        await asyncio.wait([getter, *(t for t in tasks if t.done())] or [getter],
                           return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            break  # a connection failed: gather raises its error below
    started = time.monotonic()
    start.set()
    streams = await asyncio.gather(*tasks)
    return LoadResult(streams=list(streams), wall_s=time.monotonic() - started)
