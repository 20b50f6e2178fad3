"""Start the real daemon (`python -m server.cli serve`) on a free loopback port, for tests.

The daemon is bound to the test run's life (tests/api/parent_bound.py): if pytest is killed,
the kernel sends the daemon SIGTERM, and its engine process follows it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.api.parent_bound import bound_to_this_process

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 600.0  # the first start converts the default model


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def engine_stats(self) -> dict:
        response = httpx.get(f"{self.base_url}/v1/engine/stats", timeout=10)
        response.raise_for_status()
        return response.json()

    def wait_ready(self, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.process.returncode}:\n"
                                   f"{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the daemon was not ready within {timeout_s:.0f} s:\n{self.log()}")

    def stop(self, *, timeout_s: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def serve_args(*, model: str | None = None, port: int, kv_cache_tokens: int | None = 16384,
               max_num_seqs: int | None = None, max_model_len: int | None = None,
               log_level: str = "warning", extra_args: tuple[str, ...] = ()) -> list[str]:
    args = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", log_level]
    for flag, value in (("--model", model), ("--kv-cache-tokens", kv_cache_tokens),
                        ("--max-num-seqs", max_num_seqs), ("--max-model-len", max_model_len)):
        if value is not None:
            args += [flag, str(value)]
    return args + list(extra_args)


@contextmanager
def running_daemon(*, model: str | None = None, kv_cache_tokens: int | None = 16384,
                   max_num_seqs: int | None = None, max_model_len: int | None = None,
                   log_level: str = "warning", extra_args: tuple[str, ...] = (),
                   startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[Daemon]:
    """A daemon with the given options, stopped (SIGINT, as Ctrl-C) on exit."""
    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="inflightd-test-", suffix=".log",
                                           delete=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        bound_to_this_process(serve_args(
            model=model, port=port, kv_cache_tokens=kv_cache_tokens,
            max_num_seqs=max_num_seqs, max_model_len=max_model_len, log_level=log_level,
            extra_args=extra_args)),
        cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    daemon = Daemon(process, port, Path(log_file.name))
    try:
        daemon.wait_ready(timeout_s=startup_timeout_s)
        yield daemon
    finally:
        daemon.stop()
        log_file.close()
        os.unlink(log_file.name)
