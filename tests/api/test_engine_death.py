"""When the engine process dies, on a real daemon: requests in flight get an error (an SSE
error event then [DONE] for a stream, a 503 for the others), /health turns 503, and the
daemon exits non-zero so that its supervisor restarts it."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.api.daemon import running_daemon
from tests.api.helpers import parse_sse
from tests.api.openai_schema import assert_matches

LONG = 1900  # tokens: far longer than the test takes


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return children


def long_completion(*, stream: bool) -> dict:
    return {"prompt": "Hi", "max_tokens": LONG, "ignore_eos": True, "stream": stream}


def test_engine_death_fails_requests_in_flight_and_the_daemon_exits_non_zero():
    with running_daemon(model="dummy:tiny", kv_cache_tokens=8192) as d:
        [engine_pid] = child_pids(d.process.pid)
        with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=120) as http:
            unstreamed = pool.submit(http.post, f"{d.base_url}/v1/completions",
                                     json=long_completion(stream=False))
            with http.stream("POST", f"{d.base_url}/v1/completions",
                             json=long_completion(stream=True)) as response:
                events = response.iter_bytes()
                raw = next(events)
                deadline = time.monotonic() + 30
                while d.engine_stats()["num_running"] != 2:
                    assert time.monotonic() < deadline, "the two requests never ran together"
                    time.sleep(0.02)
                killed_at = time.monotonic()
                os.kill(engine_pid, signal.SIGKILL)
                raw += b"".join(events)
            failed = unstreamed.result(timeout=30)
            health = http.get(f"{d.base_url}/health")
        streamed = parse_sse(raw)  # it still ends with [DONE]
        assert "error" in streamed[-1], streamed[-1]
        assert_matches(streamed[-1], "ErrorResponse")
        assert all("choices" in event for event in streamed[:-1])
        assert failed.status_code == 503, failed.text
        assert_matches(failed.json(), "ErrorResponse")
        assert failed.json()["error"]["code"] == "engine_unavailable"
        assert health.status_code == 503
        assert d.process.wait(timeout=30) == 1
        assert time.monotonic() - killed_at < 20
