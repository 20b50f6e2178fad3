"""The serving benchmark's client against an in-process fake endpoint (an aiohttp server on a
local port): SSE parsing, token counting from usage, ITL splitting, errors, arrivals and
concurrency."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import statistics

import pytest
from aiohttp import web

from server.bench.datasets import SampleRequest
from server.bench.metrics import summarize
from server.bench.serve import (BenchmarkError, ServeConfig, arrival_offsets, build_payload,
                                run_requests)
from server.bench.stream import StreamRecorder


class WordTokenizer:
    """One token per space-separated word; enough to count text when a server gives no usage."""

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]


def fake_endpoint(*, chunk_delay: float = 0.0, tokens_per_chunk: int = 1,
                  include_usage: bool = True, continuous_usage: bool = False,
                  fail_status: int | None = None, drop_done: bool = False,
                  in_flight: list[int] | None = None):
    """A /v1/completions stand-in that streams max_tokens words, `tokens_per_chunk` a chunk.
    `in_flight`, when given, records [current, peak] concurrent requests."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if fail_status is not None:
            return web.json_response({"error": {"message": "overloaded"}}, status=fail_status)
        return await stream_response(request, events(body))

    async def events(body: dict):
        if in_flight is not None:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        sent = 0
        while sent < body["max_tokens"]:
            await asyncio.sleep(chunk_delay)
            count = min(tokens_per_chunk, body["max_tokens"] - sent)
            sent += count
            chunk = {"choices": [{"index": 0, "text": " tok" * count, "finish_reason": None}]}
            if continuous_usage:
                chunk["usage"] = {"prompt_tokens": 5, "completion_tokens": sent}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        if include_usage:
            usage = {"prompt_tokens": 5, "completion_tokens": sent, "total_tokens": 5 + sent}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
        if in_flight is not None:
            in_flight[0] -= 1
        if not drop_done:
            yield b"data: [DONE]\n\n"

    return handler


async def stream_response(request: web.Request, events) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    async for event in events:
        await response.write(event)
    await response.write_eof()
    return response


async def serving(handler, work):
    """work(base_url) while `handler` answers every POST on a local port."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        return await work(f"http://127.0.0.1:{sock.getsockname()[1]}")
    finally:
        await runner.cleanup()


def run_against(handler, *, samples: list[SampleRequest], **config_kwargs):
    async def work(base_url: str):
        config = ServeConfig(base_url=base_url, model="m", show_progress=False,
                             **config_kwargs)
        return await run_requests(config, samples, tokenizer=WordTokenizer())

    run = asyncio.run(serving(handler, work))
    assert run.test_request.success and run.test_request.output_tokens == 1
    return run.results, run.duration


def samples_of(*, count: int, output_len: int) -> list[SampleRequest]:
    return [SampleRequest(prompt=f"prompt {i}", prompt_len=2, output_len=output_len)
            for i in range(count)]


def test_token_counts_come_from_usage_not_from_chunks():
    results, _ = run_against(fake_endpoint(tokens_per_chunk=3),
                             samples=samples_of(count=4, output_len=8))
    assert all(r.success and r.output_tokens == 8 and r.token_source == "usage" for r in results)
    assert all(r.prompt_tokens == 5 for r in results)
    assert all(len(r.itls) == 2 for r in results)  # 3 chunks: one gap per chunk after the first


def test_without_usage_the_text_is_counted_with_the_tokenizer():
    results, _ = run_against(fake_endpoint(tokens_per_chunk=2, include_usage=False),
                             samples=samples_of(count=2, output_len=6))
    assert all(r.output_tokens == 6 and r.token_source == "tokenizer" for r in results)
    assert all(r.prompt_tokens is None for r in results)


def test_timings_follow_the_stream():
    results, duration = run_against(fake_endpoint(chunk_delay=0.02),
                                    samples=samples_of(count=3, output_len=5))
    for r in results:
        assert 0.015 <= r.ttft <= r.e2e <= duration
        assert len(r.itls) == 4 and min(r.itls) >= 0.015
        assert r.tpot == pytest.approx(statistics.mean(r.itls), rel=0.3)


def test_continuous_usage_splits_a_chunk_gap_over_its_tokens():
    recorder = StreamRecorder(endpoint="completions")
    recorder.add_chunk({"choices": [{"text": "a b"}], "usage": {"completion_tokens": 2}}, 0.5)
    recorder.add_chunk({"choices": [{"text": " c d e"}], "usage": {"completion_tokens": 5}}, 0.8)
    recorder.add_chunk({"choices": [{"text": " f"}], "usage": {"completion_tokens": 6}}, 1.0)
    assert recorder.ttft == 0.5
    assert recorder.itls == pytest.approx([0.0, 0.1, 0.1, 0.1, 0.2])
    assert recorder.completion_tokens == 6


def test_continuous_usage_end_to_end_gives_one_itl_per_token_after_the_first():
    results, _ = run_against(fake_endpoint(tokens_per_chunk=3, continuous_usage=True),
                             samples=samples_of(count=2, output_len=7),
                             continuous_usage_stats=True)
    assert all(len(r.itls) == 6 for r in results)


def test_chat_role_only_and_empty_chunks_are_not_first_tokens():
    recorder = StreamRecorder(endpoint="chat")
    recorder.add_chunk({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, 0.1)
    recorder.add_chunk({"choices": [{"delta": {}}]}, 0.2)
    recorder.add_chunk({"choices": [{"delta": {"content": "Hi"}}]}, 0.3)
    recorder.add_chunk({"choices": [{"delta": {"content": "!"}, "finish_reason": "stop"}]}, 0.45)
    recorder.add_chunk({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
                       0.5)
    assert recorder.ttft == 0.3
    assert recorder.itls == pytest.approx([0.15])
    assert (recorder.text, recorder.prompt_tokens, recorder.completion_tokens) == ("Hi!", 9, 2)


def test_an_error_event_mid_stream_fails_the_request():
    recorder = StreamRecorder(endpoint="completions")
    recorder.add_chunk({"error": {"message": "engine died", "type": "server_error"}}, 0.1)
    assert recorder.error == "engine died"


def test_endpoint_that_rejects_the_test_request_stops_the_benchmark():
    with pytest.raises(BenchmarkError, match="HTTP 503: overloaded"):
        run_against(fake_endpoint(fail_status=503), samples=samples_of(count=2, output_len=4))


def test_stream_cut_before_done_is_a_failed_request_with_its_reason():
    from server.bench.serve import make_client, send_request

    async def work(base_url: str):
        config = ServeConfig(base_url=base_url + "/v1", model="m", show_progress=False)
        async with make_client(config) as client:
            return await send_request(client, config, samples_of(count=1, output_len=3)[0],
                                      tokenizer=WordTokenizer(), bench_start=0.0)

    result = asyncio.run(serving(fake_endpoint(drop_done=True), work))
    assert not result.success and "before data: [DONE]" in result.error
    summary = summarize([result], duration=1.0)
    assert summary.failed == 1 and list(summary.errors.values()) == [1]


def test_max_concurrency_caps_requests_in_flight():
    in_flight = [0, 0]
    results, _ = run_against(fake_endpoint(chunk_delay=0.01, in_flight=in_flight),
                             samples=samples_of(count=8, output_len=3), max_concurrency=2)
    assert all(r.success for r in results)
    assert in_flight[1] == 2


def test_poisson_arrivals_are_seeded_with_the_asked_mean_rate():
    offsets = arrival_offsets(4000, request_rate=8.0, seed=1)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    assert offsets == arrival_offsets(4000, request_rate=8.0, seed=1)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert statistics.mean(gaps) == pytest.approx(1 / 8.0, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / 8.0, rel=0.1)  # exponential: sd == mean
    assert arrival_offsets(3, request_rate=math.inf, seed=1) == [0.0, 0.0, 0.0]


def test_payload_asks_for_usage_and_exact_lengths():
    sample = SampleRequest(prompt="hello", prompt_len=1, output_len=12)
    chat = build_payload(ServeConfig(base_url="http://x", model="m", endpoint="chat"), sample,
                         max_tokens=12)
    assert chat["messages"] == [{"role": "user", "content": "hello"}]
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["ignore_eos"] is True and chat["max_tokens"] == 12
    plain = build_payload(ServeConfig(base_url="http://x", model="m", ignore_eos=False), sample,
                          max_tokens=12)
    assert plain["prompt"] == "hello" and "ignore_eos" not in plain


def test_base_url_with_or_without_v1_reaches_the_same_endpoint():
    for base in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"):
        assert ServeConfig(base_url=base, model="m").url == "http://h:8000/v1/completions"
    assert ServeConfig(base_url="http://h", model="m", endpoint="chat").url == (
        "http://h/v1/chat/completions")


def test_triton_endpoint_streams_generate_stream_with_ensemble_inputs():
    config = ServeConfig(base_url="http://h:8000/v1", model="m", endpoint="triton",
                         triton_model="ensemble", temperature=0.7)
    assert config.url == "http://h:8000/v2/models/ensemble/generate_stream"
    payload = build_payload(config, SampleRequest(prompt="hi", prompt_len=1, output_len=9),
                            max_tokens=9)
    assert payload == {"text_input": "hi", "max_tokens": 9, "stream": True, "end_id": -1,
                       "temperature": 0.7, "top_p": 1.0}


def test_triton_events_need_no_done_and_carry_their_text():
    async def handler(request: web.Request) -> web.StreamResponse:
        count = (await request.json())["max_tokens"]

        async def events():
            for _ in range(count):
                yield b'data: {"model_name": "ensemble", "text_output": " tok"}\n\n'

        return await stream_response(request, events())

    results, _ = run_against(handler, samples=samples_of(count=3, output_len=5),
                             endpoint="triton")
    assert all(r.success and r.output_tokens == 5 and r.token_source == "tokenizer"
               for r in results)
    assert all(len(r.itls) == 4 for r in results)


def test_a_client_busy_most_of_the_run_is_warned_about():
    from server.bench.serve import ServeRun

    def run(cpu: float) -> ServeRun:
        return ServeRun(results=[], duration=10.0, test_request=None, client_cpu_seconds=cpu)

    assert run(2.0).client_busy == pytest.approx(0.2) and run(2.0).client_warning() is None
    assert "busy 90% of the run" in run(9.0).client_warning()


def test_the_timed_run_records_the_clients_cpu_time():
    async def work(base_url: str):
        config = ServeConfig(base_url=base_url, model="m", show_progress=False)
        return await run_requests(config, samples_of(count=4, output_len=20),
                                  tokenizer=WordTokenizer())

    run = asyncio.run(serving(fake_endpoint(), work))
    assert 0 < run.client_cpu_seconds and run.client_busy <= 1.5
