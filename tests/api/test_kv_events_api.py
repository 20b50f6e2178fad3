"""`--kv-events-endpoint` on a real daemon: a plain ZeroMQ subscriber sees the blocks a
request's prompt filled, under the topic it asked for, and the replay socket resends them;
a publisher address that cannot be opened stops the daemon with the address in the error."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from server.engine.service.kv_events import external_hash
from server.kvcache.prefix_hash import hash_full_blocks
from tests.api.daemon import REPO_ROOT, Daemon, free_port, running_daemon
from tests.kv_event_subscriber import KVEventSubscriber, rebuild

TINY = "dummy:tiny"
BLOCK_SIZE = 16
TOPIC = "kv@pod-a@tiny"


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def daemon(ports) -> Iterator[Daemon]:
    port, replay_port = ports
    with running_daemon(model=TINY, kv_cache_tokens=4096, extra_args=(
            "--block-size", str(BLOCK_SIZE), "--kv-events-endpoint", f"tcp://*:{port}",
            "--kv-events-replay-endpoint", f"tcp://*:{replay_port}",
            "--kv-events-topic", TOPIC)) as running:
        yield running


def complete(daemon: Daemon, prompt: list[int]) -> dict:
    response = httpx.post(f"{daemon.base_url}/v1/completions", timeout=60, json={
        "prompt": prompt, "max_tokens": 8, "ignore_eos": True, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_subscriber_sees_the_prompts_blocks_and_replay_fills_in_the_start(daemon, ports):
    port, replay_port = ports
    prompt = list(range(300, 340))  # 40 tokens: two full blocks of 16
    with KVEventSubscriber(endpoint=f"tcp://127.0.0.1:{port}",
                           replay_endpoint=f"tcp://127.0.0.1:{replay_port}",
                           topic=TOPIC.encode()) as client:
        client.receive_until_quiet(quiet_s=0.5)  # joined; the start-up batch came before
        complete(daemon, prompt)
        again = complete(daemon, prompt)
        assert client.receive_until_quiet() >= 1
        missed = client.replay(start=0)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 2 * BLOCK_SIZE
    blocks = rebuild({**missed, **client.live})
    expected = hash_full_blocks(prompt, BLOCK_SIZE, num_blocks=2)
    # 40 prompt tokens and 7 computed output tokens fill two blocks; the repeat hits them
    assert blocks.hashes == {external_hash(h) for h in expected}
    assert (blocks.num_cleared, blocks.num_stored, blocks.num_removed) == (1, 2, 0)


def test_an_address_in_use_stops_the_daemon_with_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "serve", "--model", TINY, "--port",
             str(free_port()), "--kv-cache-tokens", "1024", "--log-level", "warning",
             "--kv-events-endpoint", f"tcp://*:{port}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0  # uvicorn's start-up failure
    assert f"cannot open the KV-event sockets (tcp://*:{port}" in result.stdout + result.stderr


def test_a_replay_address_without_an_endpoint_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--kv-events-replay-endpoint",
         "tcp://*:5558"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--kv-events-replay-endpoint needs --kv-events-endpoint" in result.stderr
