"""Many streaming clients at once: all finish, each with the text it gets alone (greedy)."""

from __future__ import annotations

import asyncio

import httpx

from tests.api.daemon import running_daemon
from tests.api.helpers import parse_sse, streamed_texts

NUM_CLIENTS = 32
# Short prompts keep the CPU prefill cheap; 8 of them, each sent by 4 clients at once.
PROMPTS = ["My favourite fruit is", "The sky is", "2 + 2 =", "Bonjour means",
           "The largest planet is", "Bees make", "The Pacific is an", "Hamlet was written by"]


async def _stream(client: httpx.AsyncClient, body: dict) -> str:
    async with client.stream("POST", "/v1/completions",
                             json={**body, "stream": True}) as response:
        assert response.status_code == 200
        raw = await response.aread()
    return streamed_texts(parse_sse(raw))[0]


async def _stream_all(base_url: str, bodies: list[dict]) -> list[str]:
    limits = httpx.Limits(max_connections=NUM_CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        return await asyncio.gather(*(_stream(client, body) for body in bodies))


def test_32_concurrent_streams_each_get_the_text_they_get_alone(daemon, http, model_name):
    bodies = [{"model": model_name, "prompt": prompt, "max_tokens": 8, "temperature": 0}
              for prompt in PROMPTS]
    alone = [http.post("/v1/completions", json=body).json()["choices"][0]["text"]
             for body in bodies]
    clients = [bodies[i % len(bodies)] for i in range(NUM_CLIENTS)]
    together = asyncio.run(_stream_all(daemon.base_url, clients))
    assert together == [alone[i % len(bodies)] for i in range(NUM_CLIENTS)]
    stats = daemon.engine_stats()
    assert stats["num_running"] == stats["num_waiting"] == 0


def test_async_scheduling_daemon_streams_the_texts_of_the_sync_daemon(http, model_name):
    bodies = [{"model": model_name, "prompt": prompt, "max_tokens": 8, "temperature": 0}
              for prompt in PROMPTS]
    stop_body = {"model": model_name, "prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0,
                 "n": 2, "stop": [" "]}
    sync_texts = [http.post("/v1/completions", json=body).json()["choices"][0]["text"]
                  for body in bodies]
    sync_stop = http.post("/v1/completions", json=stop_body).json()["choices"]
    with running_daemon(max_num_seqs=8, extra_args=("--async-scheduling", "on")) as daemon:
        clients = [bodies[i % len(bodies)] for i in range(16)]
        together = asyncio.run(_stream_all(daemon.base_url, clients))
        with httpx.Client(base_url=daemon.base_url, timeout=120) as client:
            async_stop = client.post("/v1/completions", json=stop_body).json()["choices"]
        stats = daemon.engine_stats()
    assert together == [sync_texts[i % len(bodies)] for i in range(16)]
    assert [(c["text"], c["finish_reason"]) for c in async_stop] == \
        [(c["text"], c["finish_reason"]) for c in sync_stop]
    assert stats["num_running"] == stats["num_waiting"] == 0
