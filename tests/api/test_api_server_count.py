"""--api-server-count 2: two api processes on one port sharing one engine process. Concurrent
streams reach both (their JSON log lines say which served each), /metrics from either adds
both up, a client that leaves has its engine request aborted, SIGTERM drains both, and no
process outlives the daemon, also when it is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.daemon import REPO_ROOT, Daemon, free_port, running_daemon
from tests.api.helpers import finish_reasons, parse_sse, stream_events, wait_until_idle
from tests.api.test_disconnect import open_request, read_until
from tests.reliability.procs import child_pids, pid_alive, poll_until

TINY = "dummy:tiny"
ARGS = ("--api-server-count", "2", "--log-format", "json")


def log_events(daemon: Daemon, event: str) -> list[dict]:
    lines = (json.loads(line) for line in daemon.log().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def both_listening(daemon: Daemon) -> None:
    assert poll_until(lambda: {e["api_process"] for e in log_events(daemon, "listening")}
                      == {0, 1}, timeout_s=60), daemon.log()


@pytest.fixture(scope="module")
def pair():
    with running_daemon(model=TINY, kv_cache_tokens=8192, log_level="info",
                        extra_args=ARGS) as daemon:
        both_listening(daemon)
        yield daemon


def successes(base_url: str) -> float:
    """request_success_total{finished_reason="length"} from a fresh connection."""
    families = text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text)
    return next(s.value for f in families for s in f.samples
                if s.name == "inflightd:request_success_total"
                and s.labels["finished_reason"] == "length")


def test_concurrent_streams_are_served_by_both_processes_and_counted_once(pair):
    before = successes(pair.base_url)

    def one_stream(i: int) -> list[dict]:
        with httpx.Client(base_url=pair.base_url, timeout=120) as http:  # own connection
            return stream_events(http, "/v1/completions",
                                 {"prompt": f"Story {i}", "max_tokens": 20, "ignore_eos": True})

    # the kernel spreads connections by a hash of their ports: 16 all landing on one of two
    # processes happens once in 30,000 rounds, so a second or third round may be needed
    streams, served_by = [], Counter()
    for round_ in range(3):
        with ThreadPoolExecutor(16) as pool:
            streams += pool.map(one_stream, range(16 * round_, 16 * (round_ + 1)))
        ids = {events[0]["id"] for events in streams}
        served_by = Counter(e["api_process"] for e in log_events(pair, "request_finished")
                            if e["req_id"] in ids)
        if set(served_by) == {0, 1}:
            break
    assert all(finish_reasons(events) == {0: "length"} for events in streams)
    assert sum(served_by.values()) == len(streams) and set(served_by) == {0, 1}, served_by
    # whichever process answers, the counts are the daemon's, not its own
    assert {successes(pair.base_url) - before for _ in range(6)} == {len(streams)}
    families = {f.name: f for f in text_string_to_metric_families(
        httpx.get(f"{pair.base_url}/metrics").text)}
    ttft = {s.name: s.value for s in families["inflightd:time_to_first_token_seconds"].samples}
    assert ttft["inflightd:time_to_first_token_seconds_count"] >= 16
    assert families["inflightd:num_requests_running"].samples  # the engine's gauges too


def test_health_and_ready_answer_for_the_one_engine_from_every_process(pair):
    for _ in range(6):
        with httpx.Client(base_url=pair.base_url, timeout=30) as http:
            assert http.get("/health").json() == {"status": "ok"}
            assert http.get("/ready").status_code == 200
            assert http.get("/v1/engine/stats").json()["num_blocks"] > 0


def test_clients_that_leave_get_their_engine_requests_aborted(pair):
    body = {"prompt": "Hi", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    sockets = [open_request(pair.port, "/v1/completions", body) for _ in range(6)]
    try:
        for sock in sockets:
            read_until(sock, b"\n\n", count=2)
        assert pair.engine_stats()["num_running"] == 6
    finally:
        for sock in sockets:
            sock.close()
    stats = wait_until_idle(pair.base_url, timeout_s=5)
    assert (stats["num_running"], stats["num_waiting"], stats["num_used_blocks"]) == (0, 0, 0)


def test_sigterm_drains_both_processes_then_stops_the_engine():
    with running_daemon(model=TINY, kv_cache_tokens=8192, log_level="info",
                        extra_args=(*ARGS, "--shutdown-timeout", "30")) as daemon:
        both_listening(daemon)
        children = child_pids(daemon.process.pid)
        assert len(children) == 3  # the engine and two api processes

        def one_stream(i: int) -> bytes:
            with httpx.Client(timeout=120) as http, http.stream(
                    "POST", f"{daemon.base_url}/v1/completions",
                    json={"prompt": f"Hi {i}", "max_tokens": 300, "ignore_eos": True,
                          "stream": True}) as response:
                return response.read()

        with ThreadPoolExecutor(8) as pool:
            streams = [pool.submit(one_stream, i) for i in range(8)]
            assert poll_until(lambda: daemon.engine_stats()["num_running"] == 8,
                              timeout_s=30)
            daemon.process.send_signal(signal.SIGTERM)
            bodies = [future.result() for future in streams]
        assert all(finish_reasons(parse_sse(raw)) == {0: "length"} for raw in bodies)
        assert daemon.process.wait(timeout=30) == 0
        assert poll_until(lambda: not any(pid_alive(pid) for pid in children), timeout_s=10)
        drained = {e["api_process"] for e in log_events(daemon, "draining")}
        assert drained == {0, 1}


def test_killing_the_daemon_stops_its_engine_and_api_processes():
    with running_daemon(model=TINY, kv_cache_tokens=4096, extra_args=ARGS) as daemon:
        children = child_pids(daemon.process.pid)
        assert len(children) == 3
        daemon.process.kill()
        daemon.process.wait()
        assert poll_until(lambda: not any(pid_alive(pid) for pid in children),
                          timeout_s=20), [pid for pid in children if pid_alive(pid)]


def test_a_bad_count_is_refused_before_anything_starts():
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port()),
         "--api-server-count", "0"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 2
    assert "--api-server-count must be in 1..64, got 0" in result.stderr
