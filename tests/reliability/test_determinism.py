"""One trace of 16 concurrent requests (mixed lengths, chat and completions, staggered
arrivals) replayed twice at temperature 0 gives identical outputs, token for token, even
though the second replay finds its prompts in the prefix cache and its requests batched
with different neighbours."""

from __future__ import annotations

import asyncio
import random

from tests.reliability.streams import ClientPlan, StreamResult, check_completed_stream, run_clients

NUM_REQUESTS = 16


def trace() -> list[ClientPlan]:
    rng = random.Random(16)
    plans = []
    for i in range(NUM_REQUESTS):
        common = {"max_tokens": rng.choice((3, 8, 17, 32, 48)), "temperature": 0,
                  "stream": True, "stream_options": {"include_usage": True}}
        if i % 3 == 0:
            path, body = "/v1/chat/completions", {
                "messages": [{"role": "user", "content": f"Name {i + 2} colours."}],
                "logprobs": True, "top_logprobs": 2, **common}
        else:
            prompt = "The quick brown fox " * rng.randint(1, 30) + f"(line {i})"
            path, body = "/v1/completions", {"prompt": prompt, "logprobs": 2, **common}
        plans.append(ClientPlan(name=f"trace{i}", path=path, body=body,
                                start_delay_s=rng.uniform(0.0, 1.0)))
    return plans


def outputs(results: list[StreamResult]) -> list[tuple[str, list[str], list[str | None]]]:
    """Per request: its text, its tokens, and its finish reason(s)."""
    out = []
    for result in results:
        check_completed_stream(result)
        text, tokens = "", []
        for event in result.events:
            for choice in event["choices"]:
                if "delta" in choice:
                    text += choice["delta"].get("content") or ""
                    entries = (choice.get("logprobs") or {}).get("content") or []
                    tokens += [entry["token"] for entry in entries]
                else:
                    text += choice["text"]
                    tokens += (choice.get("logprobs") or {}).get("tokens") or []
        out.append((text, tokens, result.finish_reasons()))
    return out


def test_trace_replayed_twice_at_temperature_zero_gives_identical_outputs(daemon):
    first = outputs(asyncio.run(run_clients(daemon.base_url, trace(), timeout_s=300)))
    second = outputs(asyncio.run(run_clients(daemon.base_url, trace(), timeout_s=300)))
    assert sum(len(tokens) for _, tokens, _ in first) > 100  # real work, not empty answers
    for plan, one, two in zip(trace(), first, second):
        assert one == two, plan.name
