"""`inflightd serve --tensor-parallel-size 2` (rank 0 in the engine process, one worker
process, gloo): the OpenAI routes answer as with one process, greedy completions give the
one-process engine's tokens, streaming works, stopping the daemon leaves no worker, and
SIGTERM under 64 clients (streamed, some leaving, and not) answers every one that stays."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams
from tests.api.daemon import Daemon, running_daemon
from tests.reliability.procs import child_pids, engine_pid, pid_alive, poll_until
from tests.reliability.streams import ClientPlan, check_completed_stream, run_clients

TINY = "dummy:tiny"  # 4 heads, 2 kv heads: splits over 2; the default model's 9 do not
PROMPT_IDS = [1, 504, 9000, 42, 7, 13, 600]
NUM_STREAMED, NUM_PLAIN = 56, 8  # issue 19's 64 clients, here on the CPU


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



def drain_plans(*, max_tokens: int) -> list[ClientPlan]:
    """The streamed clients: chat and completions read to the end, every seventh leaving
    after a few events."""
    plans = []
    for i in range(NUM_STREAMED):
        body = {"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        leave = 3 if i % 7 == 6 else None
        if i % 2:
            plans.append(ClientPlan(name=f"completion{i}", path="/v1/completions",
                                    leave_after_events=leave,
                                    body={"prompt": f"Drain {i}:", "logprobs": 0, **body}))
        else:
            plans.append(ClientPlan(name=f"chat{i}", path="/v1/chat/completions",
                                    leave_after_events=leave, body={
                                        "messages": [{"role": "user", "content": f"Drain {i}"}],
                                        "logprobs": True, **body}))
    return plans


async def _clients(base_url: str, *, max_tokens: int) -> tuple[list, list]:
    """Every client at once: the streamed ones and NUM_PLAIN non-streamed completions."""
    async def plain(i: int) -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
            return await client.post("/v1/completions", json={
                "prompt": f"Plain {i}:", "max_tokens": max_tokens, "ignore_eos": True})

    streamed = run_clients(base_url, drain_plans(max_tokens=max_tokens), timeout_s=300)
    results = await asyncio.gather(streamed, *(plain(i) for i in range(NUM_PLAIN)))
    return results[0], list(results[1:])


def test_sigterm_with_64_clients_over_two_ranks_answers_every_client_and_leaves_nothing():
    max_tokens = 32
    with running_daemon(model=TINY, kv_cache_tokens=8192, max_num_seqs=64,
                        extra_args=("--tensor-parallel-size", "2", "--device", "cpu",
                                    "--shutdown-timeout", "120")) as daemon:
        engine, workers = engine_pid(daemon.process.pid), workers_of(daemon)
        outcome: list = []
        clients = threading.Thread(target=lambda: outcome.extend(asyncio.run(_clients(
            daemon.base_url, max_tokens=max_tokens))))
        clients.start()
        assert poll_until(lambda: _num_running(daemon.base_url) >= 32, timeout_s=120,
                          interval_s=0.05)
        daemon.process.send_signal(signal.SIGTERM)
        clients.join(300)
        assert daemon.process.wait(timeout=120) == 0
    assert poll_until(lambda: not any(pid_alive(p) for p in (engine, *workers)), timeout_s=15)
    streamed, plain = outcome
    assert len(streamed) + len(plain) == 64
    for result in streamed:
        if result.plan.leaves:
            assert result.status == 200 and result.left_early, result.plan.name
        else:
            assert result.completed, (result.plan.name, result.status, result.error_body)
            check_completed_stream(result)
    for response in plain:
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == max_tokens


def _num_running(base_url: str) -> int:
    try:
        return httpx.get(f"{base_url}/v1/engine/stats", timeout=5).json()["num_running"]
    except httpx.TransportError:
        return 0
