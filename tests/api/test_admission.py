"""Admission control and limits on a real daemon: the queue limit's fast 429, the body
size cap enforced while reading, and the caps on n, stop strings and max_tokens."""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.daemon import Daemon, running_daemon
from tests.api.openai_schema import assert_matches

MAX_QUEUED = 2
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    # One request runs at a time, so the next ones queue.
    with running_daemon(model="dummy:tiny", kv_cache_tokens=4096, max_num_seqs=1,
                        extra_args=("--max-queued-requests", str(MAX_QUEUED),
                                    "--max-request-body-bytes", str(MAX_BODY_BYTES))) as running:
        yield running


def wait_for_waiting(daemon: Daemon, num_waiting: int, *, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while daemon.engine_stats()["num_waiting"] != num_waiting:
        assert time.monotonic() < deadline, f"never {num_waiting} waiting"
        time.sleep(0.02)


def complete(base_url: str, **body) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/completions", timeout=120,
                      json={"prompt": "Hi", "ignore_eos": True, **body})


def test_requests_past_the_queue_limit_get_429_with_retry_after_at_once(daemon):
    body = {"prompt": "Hi", "max_tokens": 1900, "ignore_eos": True, "stream": True}
    with ThreadPoolExecutor(2) as pool, httpx.Client(timeout=120) as http:
        with http.stream("POST", f"{daemon.base_url}/v1/completions", json=body) as running:
            events = running.iter_bytes()  # kept: dropping the iterator closes the stream
            next(events)  # the running request has its first token
            queued = [pool.submit(complete, daemon.base_url, max_tokens=3)
                      for _ in range(MAX_QUEUED)]
            wait_for_waiting(daemon, MAX_QUEUED)
            refusals = []
            for _ in range(5):
                started = time.perf_counter()
                refused = http.post(f"{daemon.base_url}/v1/completions",
                                    json={"prompt": "Hi", "max_tokens": 3})
                refusals.append(time.perf_counter() - started)
                assert refused.status_code == 429, refused.text
                assert refused.headers["retry-after"] == "1"
                assert_matches(refused.json(), "ErrorResponse")
                assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            # decided in the api process, without waiting on the busy engine
            assert statistics.median(refusals) < 0.05, refusals
            assert http.get(f"{daemon.base_url}/health").status_code == 200
        # the running one is gone (its client left): the queued ones run and finish
        for future in queued:
            response = future.result(timeout=60)
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] == 3
    assert complete(daemon.base_url, max_tokens=2).status_code == 200


def read_response(sock: socket.socket, *, timeout_s: float = 10) -> tuple[bytes, dict]:
    """The status line and JSON body of a response read off a raw socket."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of the body"
        body += chunk
    return head.split(b"\r\n")[0], json.loads(body)


def test_a_declared_body_over_the_cap_gets_413_before_any_of_it_is_sent(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: 100000000\r\n\r\n")
        status, body = read_response(sock)
    assert status.startswith(b"HTTP/1.1 413 "), status
    assert_matches(body, "ErrorResponse")
    assert body["error"]["code"] == "request_too_large"


def test_a_chunked_body_gets_413_once_it_crosses_the_cap_without_being_read_to_its_end(
        daemon):
    chunk = b"x" * 4096
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):  # just past the cap; never ended
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, body = read_response(sock)
    assert status.startswith(b"HTTP/1.1 413 "), status
    assert_matches(body, "ErrorResponse")
    assert body["error"]["code"] == "request_too_large"


def test_a_body_under_the_cap_is_served(daemon):
    padding = "x" * (MAX_BODY_BYTES // 2)
    response = complete(daemon.base_url, max_tokens=1, user=padding)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 17}, "n"),
    ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
    ({"stop": "x" * 257}, "stop"),
    ({"stop_token_ids": list(range(65))}, "stop_token_ids"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"prompt": ["Hi"] * 20, "n": 16}, "prompt"),
], ids=["n", "stop-count", "stop-length", "stop-token-ids", "max-tokens-beyond-context",
        "max-tokens-zero", "prompts-times-n"])
def test_limits_on_request_fields_answer_400_naming_the_field(daemon, fields, param):
    response = complete(daemon.base_url, **{"max_tokens": 1, **fields})
    assert response.status_code == 400, response.text
    assert_matches(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param
