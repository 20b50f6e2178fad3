"""`inflightd serve` options, startup failures, engine death and shutdown, on daemons of
their own (a tiny random-weight model, so they start in seconds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.api.daemon import REPO_ROOT, free_port, running_daemon
from tests.api.openai_schema import assert_matches

TINY = "dummy:tiny"


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return children


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def wait_until_gone(pid: int, *, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.1)


def test_serve_options_shape_the_engine_and_the_api_and_sigint_stops_both():
    with running_daemon(model=TINY, kv_cache_tokens=1024, max_model_len=256,
                        extra_args=("--served-model-name", "tiny", "--block-size", "8",
                                    "--disable-prefix-caching", "--max-num-seqs", "4")) as d:
        [engine_pid] = child_pids(d.process.pid)
        models = httpx.get(f"{d.base_url}/v1/models").json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [("tiny", 256)]
        stats = d.engine_stats()
        assert (stats["block_size"], stats["kv_cache_tokens"]) == (8, 1024)
        response = httpx.post(f"{d.base_url}/v1/completions", timeout=60,
                              json={"model": "tiny", "prompt": "Hello", "max_tokens": 5,
                                    "ignore_eos": True, "n": 2})
        assert response.status_code == 200, response.text
        assert_matches(response.json(), "CreateCompletionResponse")
        assert response.json()["usage"]["completion_tokens"] == 10
        too_long = httpx.post(f"{d.base_url}/v1/completions",
                              json={"model": "tiny", "prompt": "Hi", "max_tokens": 256})
        assert too_long.json()["error"]["code"] == "context_length_exceeded"
        assert d.stop() == 0  # SIGINT, as Ctrl-C: a clean exit
        wait_until_gone(engine_pid)


def test_health_is_503_while_the_engine_hangs_or_once_it_died():
    with running_daemon(model=TINY, kv_cache_tokens=1024,
                        extra_args=("--health-timeout", "1")) as d:
        [engine_pid] = child_pids(d.process.pid)
        assert httpx.get(f"{d.base_url}/health").status_code == 200
        os.kill(engine_pid, signal.SIGSTOP)  # alive, but answering nothing
        try:
            hung = httpx.get(f"{d.base_url}/health", timeout=10)
        finally:
            os.kill(engine_pid, signal.SIGCONT)
        assert hung.status_code == 503
        assert_matches(hung.json(), "ErrorResponse")
        assert httpx.get(f"{d.base_url}/health", timeout=10).status_code == 200
        os.kill(engine_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while httpx.get(f"{d.base_url}/health").status_code != 503:
            assert time.monotonic() < deadline, "health still 200 after the engine died"
            time.sleep(0.1)
        assert httpx.get(f"{d.base_url}/ready").status_code == 503
        response = httpx.post(f"{d.base_url}/v1/completions",
                              json={"prompt": "Hello", "max_tokens": 2})
        assert response.status_code == 503
        assert_matches(response.json(), "ErrorResponse")


def engine_socket_dir(engine_pid: int) -> Path:
    args = json.loads(Path(f"/proc/{engine_pid}/cmdline").read_bytes().split(b"\0")[-2])
    return Path(args["input_addresses"][0].removeprefix("ipc://")).parent


def test_engine_exits_and_cleans_up_when_the_daemon_is_killed():
    with running_daemon(model=TINY, kv_cache_tokens=1024) as d:
        [engine_pid] = child_pids(d.process.pid)
        socket_dir = engine_socket_dir(engine_pid)
        assert socket_dir.is_dir()
        d.process.kill()
        d.process.wait()
        wait_until_gone(engine_pid)  # its stdin pipe closed with the daemon
        assert not socket_dir.exists()


def test_unknown_model_fails_startup_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port()),
         "--model", "/no/such/model/dir"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "/no/such/model/dir" in result.stderr
