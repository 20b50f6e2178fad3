"""`inflightd serve --tensor-parallel-size 2` (rank 0 in the engine process, one worker
process, gloo): the OpenAI routes answer as with one process, greedy completions give the
one-process engine's tokens, streaming works, and stopping the daemon leaves no worker."""

from __future__ import annotations

from collections.abc import Iterator

import time
from pathlib import Path

import httpx
import pytest

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams
from tests.api.daemon import Daemon, running_daemon
from tests.reliability.procs import child_pids, pid_alive

TINY = "dummy:tiny"  # 4 heads, 2 kv heads: splits over 2; the default model's 9 do not
PROMPT_IDS = [1, 504, 9000, 42, 7, 13, 600]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon(model=TINY, kv_cache_tokens=4096,
                        extra_args=("--tensor-parallel-size", "2", "--device", "cpu")) as running:
        yield running


def workers_of(daemon: Daemon) -> list[int]:
    """The engine process's tensor-parallel workers (multiprocessing's spawned children)."""
    [engine] = child_pids(daemon.process.pid)
    return [pid for pid in child_pids(engine)
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_greedy_completion_gives_the_one_process_engines_tokens(daemon):
    response = httpx.post(f"{daemon.base_url}/v1/completions", timeout=120, json={
        "model": TINY, "prompt": PROMPT_IDS, "max_tokens": 12, "temperature": 0,
        "ignore_eos": True})
    assert response.status_code == 200, response.text
    with LLM(TINY, device="cpu", kv_cache_tokens=4096) as one_process:
        expected = one_process.generate([PROMPT_IDS], SamplingParams(
            temperature=0, max_tokens=12, ignore_eos=True))[0]
    assert response.json()["choices"][0]["text"] == expected.text
    assert len(workers_of(daemon)) == 1


def test_chat_streams_over_two_ranks(daemon):
    chunks = []
    with httpx.stream("POST", f"{daemon.base_url}/v1/chat/completions", timeout=120, json={
            "model": TINY, "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 8, "stream": True}) as response:
        assert response.status_code == 200
        chunks = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert chunks[-1] == "data: [DONE]" and len(chunks) >= 3


def test_stopping_the_daemon_leaves_no_worker():
    with running_daemon(model=TINY, kv_cache_tokens=1024,
                        extra_args=("--tensor-parallel-size", "2", "--device", "cpu")) as running:
        workers = workers_of(running)
        assert len(workers) == 1
    deadline = time.monotonic() + 15
    while any(pid_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(pid) for pid in workers)
