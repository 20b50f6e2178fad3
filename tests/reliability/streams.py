"""Streaming clients for the reliability tests: each reads one SSE stream its own way (to the
end, slowly through a small socket buffer, or leaving at a chosen moment) and reports what
it saw, so that the test can check every completed stream's accounting.

Tokens are counted from logprobs, which carry one entry per generated token whatever way
the text was cut into chunks (a chunk's text can hold several tokens, or none)."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx

SLOW_READER_RCVBUF = 4096  # bytes: a small receive window, so a slow reader pushes back


@dataclass(frozen=True)
class ClientPlan:
    """How one client behaves. `leave_after_events`: close after reading this many events;
    `leave_after_s`: close this long after sending; `read_delay_s`: pause between reads."""

    name: str
    path: str
    body: dict[str, Any]
    leave_after_events: int | None = None
    leave_after_s: float | None = None
    read_delay_s: float = 0.0
    start_delay_s: float = 0.0

    @property
    def leaves(self) -> bool:
        return self.leave_after_events is not None or self.leave_after_s is not None


@dataclass
class StreamResult:
    plan: ClientPlan
    status: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False  # read `data: [DONE]`
    after_done: bytes = b""  # anything after [DONE] (there must be nothing)
    left_early: bool = False  # the client closed the connection itself
    error_body: bytes = b""

    @property
    def completed(self) -> bool:
        return self.status == 200 and self.done

    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for e in self.events for c in e.get("choices", ())
                if c.get("finish_reason") is not None]

    def num_streamed_tokens(self) -> int:
        return sum(_num_logprob_entries(c) for e in self.events for c in e.get("choices", ()))

    def usage(self) -> dict[str, Any] | None:
        usages = [e["usage"] for e in self.events if e.get("usage")]
        return usages[-1] if usages else None

    def error_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "error" in e]


def _num_logprob_entries(choice: dict[str, Any]) -> int:
    logprobs = choice.get("logprobs")
    if not logprobs:
        return 0
    if "content" in logprobs:  # chat
        return len(logprobs["content"] or ())
    return len(logprobs.get("tokens") or ())  # completions


def _transport(plan: ClientPlan) -> httpx.AsyncHTTPTransport:
    options = []
    if plan.read_delay_s > 0:
        options.append((socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READER_RCVBUF))
    return httpx.AsyncHTTPTransport(socket_options=options, retries=0)


async def run_client(base_url: str, plan: ClientPlan, *, timeout_s: float) -> StreamResult:
    """One client on a connection of its own, closed when it is done or leaves."""
    result = StreamResult(plan=plan)
    await asyncio.sleep(plan.start_delay_s)
    async with httpx.AsyncClient(base_url=base_url, transport=_transport(plan),
                                 timeout=timeout_s) as client:
        reading = _read(client, plan, result)
        if plan.leave_after_s is None:
            await reading
            return result
        try:
            await asyncio.wait_for(reading, plan.leave_after_s)
        except asyncio.TimeoutError:
            result.left_early = True
    return result


async def _read(client: httpx.AsyncClient, plan: ClientPlan, result: StreamResult) -> None:
    async with client.stream("POST", plan.path, json=plan.body) as response:
        result.status = response.status_code
        if response.status_code != 200:
            result.error_body = await response.aread()
            return
        async for line in response.aiter_lines():
            if plan.read_delay_s:
                await asyncio.sleep(plan.read_delay_s)
            if not line:
                continue
            if result.done:
                result.after_done += line.encode()
            elif line == "data: [DONE]":
                result.done = True
            else:
                assert line.startswith("data: "), line
                result.events.append(json.loads(line[len("data: "):]))
            if plan.leave_after_events is not None \
                    and len(result.events) >= plan.leave_after_events and not result.done:
                result.left_early = True
                return  # leaving the block closes the connection mid-stream


async def run_clients(base_url: str, plans: list[ClientPlan], *,
                      timeout_s: float) -> list[StreamResult]:
    return list(await asyncio.gather(*(run_client(base_url, plan, timeout_s=timeout_s)
                                       for plan in plans)))


def check_completed_stream(result: StreamResult) -> None:
    """A stream read to the end: one finish_reason, [DONE] last, and as many tokens
    streamed as its usage says were generated."""
    name = result.plan.name
    assert not result.error_events(), (name, result.error_events())
    reasons = result.finish_reasons()
    assert len(reasons) == 1, (name, reasons)
    assert result.after_done == b"", (name, result.after_done)
    usage = result.usage()
    assert usage is not None, f"{name}: no usage chunk"
    assert result.num_streamed_tokens() == usage["completion_tokens"], (
        name, result.num_streamed_tokens(), usage)
    max_tokens = result.plan.body["max_tokens"]
    assert 0 <= usage["completion_tokens"] <= max_tokens, (name, usage, max_tokens)
    if result.plan.body.get("ignore_eos"):
        assert (reasons[0], usage["completion_tokens"]) == ("length", max_tokens), (
            name, reasons, usage)
