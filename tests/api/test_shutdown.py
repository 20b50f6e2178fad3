"""Graceful shutdown on SIGTERM, on real daemons: /ready turns 503 and new requests are
refused while requests in flight finish; past --shutdown-timeout the rest end with
finish_reason "abort"; either way the daemon exits 0."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.api.daemon import Daemon, running_daemon
from tests.api.helpers import finish_reasons, parse_sse
from tests.api.openai_schema import assert_matches

TINY = "dummy:tiny"
LONG = 1900  # tokens: ~10 s or more on the tiny model, far longer than these tests wait


def wait_until(condition: Callable[[], bool], *, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def completion(daemon: Daemon, *, max_tokens: int, stream: bool = False) -> dict:
    return {"prompt": "Hi", "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}


def post_completion(daemon: Daemon, *, max_tokens: int) -> httpx.Response:
    return httpx.post(f"{daemon.base_url}/v1/completions", timeout=120,
                      json=completion(daemon, max_tokens=max_tokens))


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones_then_exits_0():
    with running_daemon(model=TINY, kv_cache_tokens=4096,
                        extra_args=("--shutdown-timeout", "30")) as d:
        with httpx.Client(timeout=120) as http:
            with http.stream("POST", f"{d.base_url}/v1/completions",
                             json=completion(d, max_tokens=400, stream=True)) as response:
                events = response.iter_bytes()
                raw = next(events)  # it is generating
                d.process.send_signal(signal.SIGTERM)
                wait_until(lambda: http.get(f"{d.base_url}/ready").status_code == 503)
                refused = post_completion(d, max_tokens=2)
                assert refused.status_code == 503
                assert_matches(refused.json(), "ErrorResponse")
                assert refused.json()["error"]["code"] == "shutting_down"
                assert http.get(f"{d.base_url}/health").status_code == 200  # alive
                raw += b"".join(events)
        assert finish_reasons(parse_sse(raw)) == {0: "length"}
        # it exits once the stream is done, not at the end of the 30 s timeout
        assert d.process.wait(timeout=15) == 0


def test_past_the_shutdown_timeout_requests_end_with_abort_and_the_daemon_exits_0():
    timeout_s = 1.0
    with running_daemon(model=TINY, kv_cache_tokens=8192,
                        extra_args=("--shutdown-timeout", str(timeout_s))) as d:
        with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=120) as http:
            unstreamed = pool.submit(post_completion, d, max_tokens=LONG)
            with http.stream("POST", f"{d.base_url}/v1/completions",
                             json=completion(d, max_tokens=LONG, stream=True)) as response:
                events = response.iter_bytes()
                raw = next(events)
                wait_until(lambda: d.engine_stats()["num_running"] == 2)
                signalled_at = time.monotonic()
                d.process.send_signal(signal.SIGTERM)
                raw += b"".join(events)
            aborted_after = time.monotonic() - signalled_at
            answer = unstreamed.result(timeout=60)
        streamed = parse_sse(raw)  # ends with [DONE]
        assert finish_reasons(streamed) == {0: "abort"}
        assert streamed[-1]["choices"][0]["finish_reason"] == "abort"
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["finish_reason"] == "abort"
        assert 0 < answer.json()["usage"]["completion_tokens"] < LONG
        assert timeout_s <= aborted_after < timeout_s + 5
        assert d.process.wait(timeout=20) == 0
        assert time.monotonic() - signalled_at < timeout_s + 15


def test_a_second_signal_stops_the_daemon_without_waiting_for_requests_in_flight():
    with running_daemon(model=TINY, kv_cache_tokens=4096,
                        extra_args=("--shutdown-timeout", "30")) as d:
        with httpx.Client(timeout=120) as http:
            with http.stream("POST", f"{d.base_url}/v1/completions",
                             json=completion(d, max_tokens=LONG, stream=True)) as response:
                events = response.iter_bytes()
                next(events)
                d.process.send_signal(signal.SIGTERM)
                wait_until(lambda: http.get(f"{d.base_url}/ready").status_code == 503)
                signalled_again_at = time.monotonic()
                d.process.send_signal(signal.SIGTERM)
                assert d.process.wait(timeout=20) == 0
        # uvicorn's own graceful wait (5 s) at most, not the 30 s drain
        assert time.monotonic() - signalled_again_at < 12
