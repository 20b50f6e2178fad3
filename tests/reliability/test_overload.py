"""Overload: more requests than the daemon will queue get fast 429s with Retry-After, every
admitted one completes in full, and bodies over the size cap get 413 before they are read.

The daemon runs 4 requests at a time and queues at most 8 more (queued: admitted by the api
but not yet scheduled by the engine), and the ramp offers 4 + 2 x 8 at once."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.api.helpers import wait_until_idle
from tests.api.openai_schema import assert_matches
from tests.reliability.rawhttp import connect, exchange, read_response, request_head

MAX_NUM_SEQS = 4
MAX_QUEUED = 8
BODY_CAP = 64 * 1024
DAEMON_OPTIONS = {"max_num_seqs": MAX_NUM_SEQS, "extra_args": (
    "--max-queued-requests", str(MAX_QUEUED), "--max-request-body-bytes", str(BODY_CAP))}
NUM_OFFERED = MAX_NUM_SEQS + 2 * MAX_QUEUED
MAX_TOKENS = 40
FAST_S = 1.0


def post_and_time(base_url: str, index: int, outcomes: list) -> None:
    body = {"prompt": f"Request {index} of the ramp:", "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True}
    start = time.monotonic()
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=600)
    outcomes[index] = (response, time.monotonic() - start)


def test_ramp_to_twice_the_queue_cap_gets_fast_429s_and_admitted_requests_complete(daemon):
    outcomes: list = [None] * NUM_OFFERED
    threads = [threading.Thread(target=post_and_time, args=(daemon.base_url, i, outcomes))
               for i in range(NUM_OFFERED)]
    for thread in threads:  # a ramp: one more request every 50 ms
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(600)
    statuses = [response.status_code for response, _ in outcomes]
    assert set(statuses) <= {200, 429}, statuses
    refused = [(r, t) for r, t in outcomes if r.status_code == 429]
    admitted = [r for r, _ in outcomes if r.status_code == 200]
    print(f"overload: {len(admitted)} admitted, {len(refused)} refused with 429 in at most "
          f"{max((t for _, t in refused), default=0):.3f} s")
    # Nothing finishes during the one-second ramp, so about 4 run, 8 queue, 8 are refused.
    assert len(refused) >= MAX_QUEUED // 2 and len(admitted) >= MAX_NUM_SEQS + MAX_QUEUED // 2, \
        statuses
    for response, elapsed_s in refused:
        assert elapsed_s < FAST_S, elapsed_s
        assert int(response.headers["retry-after"]) >= 1
        assert_matches(response.json(), "ErrorResponse")
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    for response in admitted:
        body = response.json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == MAX_TOKENS
    stats = wait_until_idle(daemon.base_url, timeout_s=30)
    assert (stats["num_running"], stats["num_waiting"], stats["num_used_blocks"]) == (0, 0, 0)
    assert stats["num_api_open_requests"] == 0


def test_body_over_the_cap_with_a_content_length_is_refused_before_it_is_read(daemon):
    prompt = "x" * BODY_CAP
    start = time.monotonic()
    response = httpx.post(f"{daemon.base_url}/v1/completions", json={"prompt": prompt})
    assert response.status_code == 413 and time.monotonic() - start < FAST_S
    assert_matches(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "request_too_large"
    under = httpx.post(f"{daemon.base_url}/v1/completions",
                       json={"prompt": "hi", "max_tokens": 1, "user": "u" * (BODY_CAP // 2)})
    assert under.status_code == 200, under.text


def test_chunked_body_over_the_cap_is_refused_while_it_arrives(daemon):
    """No Content-Length to refuse up front: the daemon counts the chunks and answers 413
    once the cap is crossed, without waiting for (or buffering) the rest."""
    piece = json.dumps({"prompt": "y" * 8192})[:8192].encode()
    with connect(daemon.port) as sock:
        sock.sendall(request_head("/v1/completions", content_length=None,
                                  extra="Transfer-Encoding: chunked\r\n"))
        start = time.monotonic()
        try:
            for _ in range(BODY_CAP // len(piece) + 2):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed while we were still sending
        response = read_response(sock)  # the last chunk (0) was never sent
    assert response.status == 413, response
    assert time.monotonic() - start < FAST_S
    assert response.json()["error"]["code"] == "request_too_large"


def test_daemon_serves_normally_after_the_overload(daemon):
    response = exchange(daemon.port, request_head("/v1/completions", content_length=33)
                        + b'{"prompt": "Hi", "max_tokens": 2}')
    assert response.status == 200, response
    assert httpx.get(f"{daemon.base_url}/health").status_code == 200
