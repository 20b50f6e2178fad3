"""The online benchmark: stream requests to an OpenAI-compatible endpoint (or Triton's
generate_stream, endpoint "triton") with Poisson arrivals (or all at once) under an optional
concurrency cap, and time every token.

The client is aiohttp: reading 256 streams of 20-ms events on one core of the 2-core CPU
here, httpx (with httpcore and anyio under it) spent 78-93 µs of CPU per event and saturated
the core at about 12,800 events a second, aiohttp 36-41 µs. A client that falls behind makes
the server merge its chunks and shows up as server latency, so the client must be the
cheaper side."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass

import aiohttp

from server.bench.datasets import SampleRequest, Tokenizer
from server.bench.metrics import RequestResult
from server.bench.stream import StreamRecorder

ENDPOINT_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions",
                  "triton": "/v2/models/{triton_model}/generate_stream"}


class BenchmarkError(ValueError):
    """The benchmark cannot run as asked (bad flags, or the endpoint rejects a test request)."""


@dataclass(frozen=True)
class ServeConfig:
    base_url: str
    model: str
    endpoint: str = "completions"
    request_rate: float = math.inf  # requests per second; inf sends them all at once
    max_concurrency: int | None = None
    api_key: str | None = None
    ignore_eos: bool = True
    temperature: float = 0.0
    request_timeout: float = 600.0
    continuous_usage_stats: bool = False  # also ask for a running token count on every chunk
    seed: int = 0
    show_progress: bool = True
    triton_model: str = "ensemble"  # the model name in the URL of endpoint "triton"

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINT_PATHS:
            raise BenchmarkError(f"--endpoint must be one of {', '.join(ENDPOINT_PATHS)}, "
                                 f"got {self.endpoint!r}")
        if not self.request_rate > 0:
            raise BenchmarkError(f"--request-rate must be > 0 or inf, got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise BenchmarkError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        base = base[: -len("/v1")] if base.endswith("/v1") else base
        return base + ENDPOINT_PATHS[self.endpoint].format(triton_model=self.triton_model)


def build_payload(config: ServeConfig, sample: SampleRequest, *, max_tokens: int) -> dict:
    if config.endpoint == "triton":
        return build_triton_payload(config, sample, max_tokens=max_tokens)
    stream_options = {"include_usage": True}
    if config.continuous_usage_stats:
        stream_options["continuous_usage_stats"] = True
    payload: dict = {"model": config.model, "max_tokens": max_tokens, "stream": True,
                     "stream_options": stream_options, "temperature": config.temperature}
    if config.ignore_eos:
        payload["ignore_eos"] = True  # an extension field; servers without it may ignore it
    if config.endpoint == "chat":
        payload["messages"] = [{"role": "user", "content": sample.prompt}]
    else:
        payload["prompt"] = sample.prompt
    return payload


def build_triton_payload(config: ServeConfig, sample: SampleRequest, *,
                         max_tokens: int) -> dict:
    """TensorRT-LLM ensemble inputs, as its users stream them. end_id -1 (no end token)
    runs to max_tokens, as ignore_eos does; a temperature samples over the whole vocabulary
    (top_p 1), since the ensemble is greedy without top_k or top_p."""
    payload: dict = {"text_input": sample.prompt, "max_tokens": max_tokens, "stream": True}
    if config.ignore_eos:
        payload["end_id"] = -1
    if config.temperature > 0:
        payload |= {"temperature": config.temperature, "top_p": 1.0}
    return payload


def arrival_offsets(num_requests: int, *, request_rate: float, seed: int) -> list[float]:
    """Send times in seconds from the start: a Poisson process (exponential gaps) at
    `request_rate`, the first at 0; all 0 for an infinite rate."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(num_requests):
        offsets.append(now)
        now += rng.expovariate(request_rate)
    return offsets


async def send_request(client: aiohttp.ClientSession, config: ServeConfig, sample: SampleRequest,
                       *, tokenizer: Tokenizer, bench_start: float,
                       max_tokens: int | None = None) -> RequestResult:
    """Stream one request. Every failure becomes a RequestResult with its error; none raises."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    payload = build_payload(config, sample, max_tokens=max_tokens or sample.output_len)
    recorder = StreamRecorder(endpoint=config.endpoint)
    sent = time.perf_counter()
    failed = None
    try:
        async with client.post(config.url, json=payload, headers=headers) as response:
            if response.status != 200:
                body = (await response.read()).decode(errors="replace")
                failed = f"HTTP {response.status}: {_error_text(body)}"
            else:
                failed = await _read_events(response.content, recorder, sent,
                                            needs_done=config.endpoint != "triton")
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:  # ValueError: a
        # line past aiohttp's read limit (128 KiB)
        failed = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    e2e = time.perf_counter() - sent
    common = dict(prompt_len=sample.prompt_len, output_len=payload["max_tokens"],
                  start=sent - bench_start)
    if failed is not None:
        return RequestResult(success=False, error=failed, **common)
    if recorder.completion_tokens is not None:
        output_tokens, source = recorder.completion_tokens, "usage"
    else:
        output_tokens, source = len(tokenizer.encode(recorder.text)), "tokenizer"
    return RequestResult(success=True, prompt_tokens=recorder.prompt_tokens,
                         output_tokens=output_tokens, token_source=source,
                         ttft=recorder.ttft if recorder.ttft is not None else e2e,
                         itls=tuple(recorder.itls), e2e=e2e, **common)


async def _read_events(body: aiohttp.StreamReader, recorder: StreamRecorder,
                       sent: float, *, needs_done: bool = True) -> str | None:
    """Feed the SSE stream to `recorder`; the error text, or None when it ended with [DONE]
    (or, for Triton, which sends no [DONE], when the stream ended without an error)."""
    async for line in body:  # one line at a time, its b"\n" included
        at = time.perf_counter() - sent
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, event names
        data = line[len(b"data:"):].strip()
        if data == b"[DONE]":
            return recorder.error
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            return f"malformed SSE data: {data[:200].decode(errors='replace')!r}"
        recorder.add_chunk(chunk, at)
        if recorder.error is not None:
            return recorder.error
    return "stream ended before data: [DONE]" if needs_done else recorder.error


def _error_text(body: str) -> str:
    try:
        error = json.loads(body).get("error")
    except (json.JSONDecodeError, AttributeError):
        return body[:300]
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or body[:300])


def make_client(config: ServeConfig) -> aiohttp.ClientSession:
    """Call inside the event loop that will use it. No pool limit: a pool smaller than the
    load would queue requests inside the client and count that wait as server latency
    (--max-concurrency is the one cap); a connection for each request, as the benchmark's
    requests are all alike and no idle connection is then left to the pool."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=config.request_timeout))


CLIENT_BUSY_WARNING = 0.8  # share of the run's wall time the client spent on its CPU


@dataclass(frozen=True)
class ServeRun:
    results: list[RequestResult]  # in dataset order
    duration: float  # wall seconds from the first send to the last response
    test_request: RequestResult  # the untimed one-token request sent first
    client_cpu_seconds: float = 0.0  # this process's CPU time over the timed run

    @property
    def client_busy(self) -> float:
        """The client's CPU time over the run's wall time: near 1, its own lag (reading
        events late, the server merging chunks it could not send) shows as latency."""
        return self.client_cpu_seconds / self.duration if self.duration > 0 else 0.0

    def client_warning(self) -> str | None:
        if self.client_busy < CLIENT_BUSY_WARNING:
            return None
        return (f"the benchmark client was busy {self.client_busy:.0%} of the run: its own "
                "lag may show as server latency; split the load over several clients")


async def check_endpoint(client: aiohttp.ClientSession, config: ServeConfig, sample: SampleRequest,
                         *, tokenizer: Tokenizer) -> RequestResult:
    """One short request before timing starts, so a wrong URL, model or key fails fast."""
    result = await send_request(client, config, sample, tokenizer=tokenizer,
                                bench_start=time.perf_counter(), max_tokens=1)
    if not result.success:
        raise BenchmarkError(f"test request to {config.url} failed: {result.error}")
    return result


async def run_requests(config: ServeConfig, samples: list[SampleRequest], *,
                       tokenizer: Tokenizer, client: aiohttp.ClientSession | None = None
                       ) -> ServeRun:
    if not samples:
        raise BenchmarkError("no requests to send")
    own_client = client is None
    client = client or make_client(config)
    try:
        test_request = await check_endpoint(client, config, samples[0], tokenizer=tokenizer)
        cpu_start = time.process_time()
        results, duration = await _timed_run(client, config, samples, tokenizer=tokenizer)
        client_cpu = time.process_time() - cpu_start
    finally:
        if own_client:
            await client.close()
    return ServeRun(results=results, duration=duration, test_request=test_request,
                    client_cpu_seconds=client_cpu)


async def _timed_run(client: aiohttp.ClientSession, config: ServeConfig,
                     samples: list[SampleRequest], *,
                     tokenizer: Tokenizer) -> tuple[list[RequestResult], float]:
    from tqdm import tqdm

    offsets = arrival_offsets(len(samples), request_rate=config.request_rate, seed=config.seed)
    slots = asyncio.Semaphore(config.max_concurrency or len(samples))
    progress = tqdm(total=len(samples), file=sys.stderr, disable=not config.show_progress,
                    desc="requests", unit="req")
    start = time.perf_counter()

    async def one(sample: SampleRequest, offset: float) -> RequestResult:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        async with slots:  # a capped request's latency starts when it is sent, not queued
            result = await send_request(client, config, sample, tokenizer=tokenizer,
                                        bench_start=start)
        progress.update(1)
        return result

    try:
        results = await asyncio.gather(*(one(s, t) for s, t in zip(samples, offsets)))
    finally:
        progress.close()
    return list(results), time.perf_counter() - start
