"""Connection limits on a real daemon: request headers that trickle in are cut off at the
header timeout, idle keep-alive connections close, and past --max-connections a new
connection is closed at once while the daemon keeps serving."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.daemon import Daemon, running_daemon

HEADER_TIMEOUT_S = 2.0
KEEP_ALIVE_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 6
SLACK_S = 1.5  # the event loop's timer and the test's own polling


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon(model="dummy:tiny", kv_cache_tokens=4096,
                        extra_args=("--header-timeout", str(HEADER_TIMEOUT_S),
                                    "--keep-alive-timeout", str(KEEP_ALIVE_TIMEOUT_S),
                                    "--max-connections", str(MAX_CONNECTIONS))) as running:
        yield running


def is_closed(sock: socket.socket, *, wait_s: float) -> bool:
    """Whether the server closed the connection within wait_s (what it sends before that,
    the rest of a response, is read and dropped)."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(4096) == b"":
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False


def health_is_served(daemon: Daemon) -> bool:
    started = time.monotonic()
    response = httpx.get(f"{daemon.base_url}/health", timeout=5)
    return response.status_code == 200 and time.monotonic() - started < 1.0


def test_headers_trickled_a_line_a_second_are_cut_off_at_the_header_timeout_while_others_are_served(
        daemon):
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        closed_after = None
        for line in range(int(HEADER_TIMEOUT_S + SLACK_S) + 3):
            if is_closed(sock, wait_s=1.0):
                closed_after = time.monotonic() - opened
                break
            assert health_is_served(daemon)  # other clients meanwhile
            try:
                sock.sendall(b"X-Slow-%d: 1\r\n" % line)
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - opened
                break
    assert closed_after is not None, "the trickling connection was never closed"
    assert HEADER_TIMEOUT_S - 0.1 <= closed_after <= HEADER_TIMEOUT_S + SLACK_S
    assert health_is_served(daemon)


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        assert not is_closed(sock, wait_s=HEADER_TIMEOUT_S - 0.5)
        assert is_closed(sock, wait_s=SLACK_S)


def kept_alive_connection(daemon: Daemon) -> socket.socket:
    """A connection that has had one request answered and stays open (keep-alive)."""
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    return sock


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(daemon):
    with kept_alive_connection(daemon) as sock:
        started = time.monotonic()
        assert is_closed(sock, wait_s=KEEP_ALIVE_TIMEOUT_S + SLACK_S)
        assert time.monotonic() - started >= KEEP_ALIVE_TIMEOUT_S - 0.1


def test_the_next_request_on_a_keep_alive_connection_has_the_header_timeout_too(daemon):
    with kept_alive_connection(daemon) as sock:
        finished = time.monotonic()
        # the first byte of the next request stops the keep-alive timer; then a trickle
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        for line in range(int(HEADER_TIMEOUT_S + SLACK_S) + 2):
            if is_closed(sock, wait_s=0.5):
                break
            sock.sendall(b"X-Slow-%d: 1\r\n" % line)
        closed_after = time.monotonic() - finished
    # not the keep-alive timeout (1 s): the header deadline, re-armed after the response
    assert HEADER_TIMEOUT_S - 0.1 <= closed_after <= HEADER_TIMEOUT_S + SLACK_S


def test_a_keep_alive_connection_serves_a_second_request_sent_in_time(daemon):
    with httpx.Client(base_url=daemon.base_url, timeout=5) as http:
        for _ in range(3):
            assert http.get("/health").status_code == 200
            time.sleep(KEEP_ALIVE_TIMEOUT_S / 3)


def held_connection(daemon: Daemon) -> socket.socket:
    """A connection whose request is under way (headers sent, body awaited), so neither
    the header nor the keep-alive timeout closes it."""
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 64\r\n\r\n")
    return sock


def test_past_max_connections_a_new_connection_is_closed_and_the_daemon_stays_healthy(daemon):
    held = [held_connection(daemon) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # every one accepted and counted
        with socket.create_connection(("127.0.0.1", daemon.port)) as extra:
            assert is_closed(extra, wait_s=1.0)
        assert all(not is_closed(sock, wait_s=0.05) for sock in held)
        held.pop().close()
        time.sleep(0.3)
        assert health_is_served(daemon)  # the freed place serves a new client
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert all(health_is_served(daemon) for _ in range(MAX_CONNECTIONS + 2))
