"""The offline benchmark: the engine driven in-process through `server.engine.llm.LLM`, with
no HTTP, API process or IPC in the way, so its figure is the engine's own throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from server.bench.datasets import SampleRequest, Tokenizer


class OfflineBenchmarkError(ValueError):
    """The offline benchmark cannot run: the engine's offline API is missing."""


@dataclass(frozen=True)
class OfflineSummary:
    num_requests: int
    load_seconds: float  # building the LLM: weights, KV cache; not in the throughputs
    duration: float  # the generate() call alone
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float


def run_offline(*, model: str, samples: list[SampleRequest], tokenizer: Tokenizer,
                temperature: float, ignore_eos: bool, seed: int, threads: int | None = None,
                engine_kwargs: dict[str, Any] | None = None) -> OfflineSummary:
    """Prompts go in as token ids from the benchmark tokenizer, so their lengths are exact and
    tokenization stays out of the timed generate() call. `threads` sets torch's CPU threads
    (None: torch's default)."""
    try:
        import torch

        from server.engine.llm import LLM  # the engine's offline API, imported only when used
        from server.scheduler.request import SamplingParams
    except ImportError as exc:
        raise OfflineBenchmarkError(f"the engine's offline API is not available: {exc}") from exc
    if threads is not None and threads < 1:
        raise OfflineBenchmarkError(f"--threads must be >= 1, got {threads}")
    if threads is not None:
        # On a shared 2-core machine, 2 threads against another busy process ran ~30x slower
        # than 1 thread here; the knob makes that measurable.
        torch.set_num_threads(threads)
    prompts = [tokenizer.encode(s.prompt) for s in samples]
    params = [SamplingParams(temperature=temperature, max_tokens=s.output_len,
                             ignore_eos=ignore_eos, seed=seed) for s in samples]
    load_start = time.perf_counter()
    llm = LLM(model, seed=seed, **(engine_kwargs or {}))
    load_seconds = time.perf_counter() - load_start
    # One short request first, so one-time costs (lazy init, kernel choice) stay out of the timing.
    llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=2))
    start = time.perf_counter()
    completions = llm.generate(prompts, params, use_tqdm=True)
    duration = time.perf_counter() - start
    input_tokens = sum(len(c.prompt_token_ids) for c in completions)
    output_tokens = sum(len(c.token_ids) for c in completions)
    return OfflineSummary(
        num_requests=len(samples), load_seconds=load_seconds, duration=duration,
        total_input_tokens=input_tokens, total_output_tokens=output_tokens,
        request_throughput=len(samples) / duration, output_throughput=output_tokens / duration,
        total_token_throughput=(input_tokens + output_tokens) / duration)


def format_offline(summary: OfflineSummary) -> str:
    rows = [("Requests", f"{summary.num_requests}"),
            ("Engine load (s)", f"{summary.load_seconds:.2f}"),
            ("Generate duration (s)", f"{summary.duration:.2f}"),
            ("Total input tokens", f"{summary.total_input_tokens}"),
            ("Total output tokens", f"{summary.total_output_tokens}"),
            ("Request throughput (req/s)", f"{summary.request_throughput:.2f}"),
            ("Output token throughput (tok/s)", f"{summary.output_throughput:.2f}"),
            ("Total token throughput (tok/s)", f"{summary.total_token_throughput:.2f}")]
    lines = [f"{' Offline benchmark ':=^48}"]
    lines += [f"{label + ':':<34}{value:>14}" for label, value in rows]
    lines.append("=" * 48)
    return "\n".join(lines)
