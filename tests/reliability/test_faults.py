"""Faults under load, each on a daemon of its own (default model):

- the engine process is SIGKILLed: clients in flight get OpenAI-shaped errors, /health turns
  503, and the daemon exits non-zero within 10 s (so that its supervisor restarts it);
- the daemon gets SIGTERM: it stops taking requests (503), lets those in flight finish in
  full, then exits 0 and takes the engine with it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

import httpx

from tests.api.daemon import running_daemon
from tests.api.openai_schema import assert_matches
from tests.reliability.conftest import BASE_DAEMON_OPTIONS
from tests.reliability.procs import engine_pid, pid_alive, poll_until
from tests.reliability.streams import ClientPlan, StreamResult, check_completed_stream, run_clients

NUM_STREAMS = 6


def stream_plans(*, max_tokens: int) -> list[ClientPlan]:
    plans = []
    for i in range(NUM_STREAMS):
        body = {"max_tokens": max_tokens, "stream": True, "ignore_eos": True, "temperature": 0,
                "stream_options": {"include_usage": True}}
        if i % 2:
            plans.append(ClientPlan(name=f"completion{i}", path="/v1/completions",
                                    body={"prompt": f"Fault test {i}:", "logprobs": 0, **body}))
        else:
            plans.append(ClientPlan(name=f"chat{i}", path="/v1/chat/completions", body={
                "messages": [{"role": "user", "content": f"Fault test {i}"}],
                "logprobs": True, **body}))
    return plans


class Load:
    """Streams (and one non-streamed request) running in a thread while the test acts."""

    def __init__(self, base_url: str, *, max_tokens: int) -> None:
        self.results: list[StreamResult] = []
        self.plain: list[httpx.Response | Exception] = []
        self._base_url = base_url
        self._max_tokens = max_tokens
        self._threads = [threading.Thread(target=self._streams),
                         threading.Thread(target=self._plain)]

    def _streams(self) -> None:
        self.results = asyncio.run(run_clients(
            self._base_url, stream_plans(max_tokens=self._max_tokens), timeout_s=300))

    def _plain(self) -> None:
        try:
            self.plain.append(httpx.post(f"{self._base_url}/v1/completions", timeout=300, json={
                "prompt": "Plain request:", "max_tokens": self._max_tokens,
                "ignore_eos": True}))
        except httpx.TransportError as exc:
            self.plain.append(exc)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        for thread in self._threads:
            thread.join(300)


def wait_until_generating(base_url: str, *, num_running: int) -> None:
    """All requests scheduled and decoding (tokens flowing)."""
    token_totals: list[int] = []

    def generating() -> bool:
        stats = httpx.get(f"{base_url}/v1/engine/stats", timeout=10).json()
        token_totals.append(stats["generation_tokens_total"])
        return stats["num_running"] >= num_running and \
            token_totals[-1] >= token_totals[0] + 3 * num_running

    assert poll_until(generating, timeout_s=120, interval_s=0.1)


def test_engine_killed_under_load_errors_clients_and_the_daemon_exits_nonzero():
    with running_daemon(**BASE_DAEMON_OPTIONS) as daemon:
        with Load(daemon.base_url, max_tokens=400) as load:
            wait_until_generating(daemon.base_url, num_running=NUM_STREAMS + 1)
            os.kill(engine_pid(daemon.process.pid), signal.SIGKILL)
            killed_at = time.monotonic()
            assert poll_until(lambda: _health(daemon.base_url) == 503, timeout_s=2)
        try:
            status = daemon.process.wait(timeout=max(0.1, killed_at + 10 - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError("the daemon still runs 10 s after its engine died") from None
        assert status != 0
        print(f"engine kill: daemon exited with {status} "
              f"{time.monotonic() - killed_at:.1f} s after the kill")
    for result in load.results:
        assert result.status == 200 and result.done, (result.plan.name, result.error_body)
        [error] = result.error_events()
        assert_matches(error, "ErrorResponse")
        assert "length" not in result.finish_reasons()
    [plain] = load.plain
    assert isinstance(plain, httpx.Response) and plain.status_code >= 500, plain
    assert_matches(plain.json(), "ErrorResponse")


def _health(base_url: str) -> int | None:
    try:
        return httpx.get(f"{base_url}/health", timeout=2).status_code
    except httpx.TransportError:
        return None


def test_sigterm_under_load_drains_requests_in_flight_then_exits_0():
    max_tokens = 48
    with running_daemon(**BASE_DAEMON_OPTIONS,
                        extra_args=("--shutdown-timeout", "120")) as daemon:
        engine = engine_pid(daemon.process.pid)
        with Load(daemon.base_url, max_tokens=max_tokens) as load:
            wait_until_generating(daemon.base_url, num_running=NUM_STREAMS + 1)
            daemon.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            late = httpx.post(f"{daemon.base_url}/v1/completions",
                              json={"prompt": "Too late", "max_tokens": 2}, timeout=10)
            ready = httpx.get(f"{daemon.base_url}/ready", timeout=10)
        assert daemon.process.wait(timeout=60) == 0
        assert poll_until(lambda: not pid_alive(engine), timeout_s=10)
    assert (late.status_code, ready.status_code) == (503, 503), (late.text, ready.text)
    assert late.json()["error"]["code"] == "shutting_down"
    assert len(load.results) == NUM_STREAMS
    for result in load.results:
        assert result.completed, (result.plan.name, result.status, result.error_body)
        check_completed_stream(result)
    [plain] = load.plain
    assert plain.status_code == 200, plain.text
    assert plain.json()["usage"]["completion_tokens"] == max_tokens
