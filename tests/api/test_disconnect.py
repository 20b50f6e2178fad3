"""Clients that leave early get their engine requests aborted and their blocks freed: while
streaming, while waiting for a non-streamed answer, and while still queued.

Raw sockets make "the client went away" exact: the test closes the connection itself."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.api.helpers import MAX_NUM_SEQS, wait_until_idle

LONG = {"max_tokens": 400, "temperature": 0, "ignore_eos": True}


def open_request(port: int, path: str, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes, *, count: int) -> bytes:
    """Read until `marker` was seen `count` times (e.g. two SSE events)."""
    received = b""
    while received.count(marker) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {received[-300:]!r}"
        received += chunk
    return received


def wait_for_engine(daemon, *, running: int, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = daemon.engine_stats()
        if stats["num_running"] >= running or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def assert_idle_within_2s(daemon) -> None:
    stats = wait_until_idle(daemon.base_url, timeout_s=2.0)
    assert stats["num_running"] == 0, stats
    assert stats["num_waiting"] == 0, stats
    # No block is held by a request; freed blocks may still hold cached prefixes.
    assert stats["num_used_blocks"] == 0, stats
    assert stats["num_free_blocks"] == stats["num_blocks"], stats
    assert stats["num_api_open_requests"] == 0, stats


@contextmanager
def open_requests(port: int, path: str, bodies: list[dict]) -> Iterator[list[socket.socket]]:
    """Requests on raw connections, closed on exit whatever happens (a failed test must not
    leave long requests running for the next one)."""
    sockets = []
    try:
        for body in bodies:
            sockets.append(open_request(port, path, body))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def generating(daemon, *, num_running: int, timeout_s: float = 120) -> dict:
    """Wait until `num_running` requests run and have all moved on to decoding (a step then
    takes a fraction of a second, even on a CPU), then return the stats."""
    stats = wait_for_engine(daemon, running=num_running, timeout_s=timeout_s)
    assert stats["num_running"] >= num_running, stats
    start = stats["generation_tokens_total"]
    deadline = time.monotonic() + timeout_s
    while stats["generation_tokens_total"] < start + 2 * num_running:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
        stats = daemon.engine_stats()
    return stats


def test_ten_streaming_clients_leaving_midway_free_everything_within_2s(daemon, model_name):
    bodies = [{"model": model_name, "prompt": f"Story number {i}:", "stream": True, **LONG}
              for i in range(10)]
    with open_requests(daemon.port, "/v1/completions", bodies) as sockets:
        for sock in sockets:
            read_until(sock, b"\n\n", count=3)  # a few chunks in: the stream is under way
        assert generating(daemon, num_running=10)["num_running"] == 10
    assert_idle_within_2s(daemon)


def test_client_leaving_a_non_streamed_request_aborts_it(daemon, model_name):
    body = {"model": model_name, "messages": [{"role": "user", "content": "Go"}], **LONG}
    with open_requests(daemon.port, "/v1/chat/completions", [body]):
        assert generating(daemon, num_running=1)["num_running"] == 1
    assert_idle_within_2s(daemon)


def test_clients_leaving_while_queued_are_dropped_from_the_queue(daemon, model_name):
    bodies = [{"model": model_name, "prompt": f"Queue {i}:", **LONG}
              for i in range(MAX_NUM_SEQS + 4)]
    with open_requests(daemon.port, "/v1/completions", bodies):
        stats = generating(daemon, num_running=MAX_NUM_SEQS)
        deadline = time.monotonic() + 30
        while stats["num_waiting"] < 4 and time.monotonic() < deadline:
            stats = daemon.engine_stats()
        # The engine is full; the last four wait their turn.
        assert stats["num_running"] == MAX_NUM_SEQS and stats["num_waiting"] == 4, stats
    assert_idle_within_2s(daemon)
