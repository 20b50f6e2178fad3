"""Many streaming clients at once: all finish, each with the text it gets alone (greedy)."""

from __future__ import annotations

import asyncio

import httpx

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
