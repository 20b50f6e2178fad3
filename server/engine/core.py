"""EngineCore: the scheduler and the model runner, stepped together.

One step is schedule -> execute -> update. The engine process loops over `step()` while
`has_unfinished()`; the offline `LLM` calls it directly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from server.config import CacheConfig, ModelConfig, SchedulerConfig
from server.engine.runner import ModelRunner
from server.engine.weights import ModelSource, resolve_model
from server.scheduler.output import RequestOutput
from server.scheduler.request import Request, SamplingParams
from server.scheduler.scheduler import Scheduler


@dataclass(frozen=True)
class EngineInfo:
    """What the api process needs to know about the engine it talks to."""

    model_name: str
    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    num_kv_blocks: int
    block_size: int
    kv_cache_tokens: int
    tokenizer_dir: str | None
    device: str
    dtype: str


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_blocks: int
    num_evictable_blocks: int  # free blocks that still hold a reusable cached prefix
    num_used_blocks: int  # held by live requests
    kv_cache_usage: float  # 0..1
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    energy_joules: float | None = None  # GPU energy since start (NVML); None: no counter


@dataclass(frozen=True)
class StepSummary:
    """What one step did, for metrics: when it started (time.monotonic(), the same clock in
    every process), how many tokens it computed, and which requests it admitted from the
    waiting queue (first admission or resumption after preemption)."""

    started_at: float
    num_batched_tokens: int
    admitted_req_ids: tuple[str, ...]


class EngineCore:
    def __init__(self, *, model_config: ModelConfig, cache_config: CacheConfig,
                 scheduler_config: SchedulerConfig, source: ModelSource | None = None) -> None:
        source = source if source is not None else resolve_model(model_config.model)
        max_model_len = _max_model_len(model_config, source)
        self.runner = ModelRunner.from_config(
            model_config, cache_config, source=source,
            max_num_seqs=scheduler_config.max_num_seqs, max_model_len=max_model_len)
        self.runner.capture_graphs()  # at startup, so the first decode step is not slow
        cache_config = replace(cache_config, num_blocks=self.runner.num_blocks,
                               kv_cache_tokens=None, memory_fraction=None)
        self.scheduler = Scheduler(replace(scheduler_config, max_model_len=max_model_len),
                                   cache_config)
        arch = source.arch
        self.info = EngineInfo(
            model_name=source.name, vocab_size=arch.vocab_size, max_model_len=max_model_len,
            eos_token_ids=arch.eos_token_ids, num_kv_blocks=self.runner.num_blocks,
            block_size=self.runner.block_size,
            kv_cache_tokens=self.runner.num_blocks * self.runner.block_size,
            tokenizer_dir=str(source.tokenizer_dir) if source.tokenizer_dir else None,
            device=str(self.runner.device), dtype=str(self.runner.dtype).removeprefix("torch."))
        self._num_prompt_tokens_total = 0
        self._num_generation_tokens_total = 0
        self.last_step: StepSummary | None = None

    def add_request(self, req_id: str, prompt_token_ids: list[int],
                    sampling_params: SamplingParams, *, arrival_time: float | None = None,
                    priority: int = 0) -> None:
        """Queues a request; raises RequestRejectedError when it could never run."""
        eos = self.info.eos_token_ids[0] if self.info.eos_token_ids else None
        request = Request(req_id=req_id, prompt_token_ids=list(prompt_token_ids),
                          sampling_params=_with_extra_eos(sampling_params, self.info),
                          eos_token_id=eos,
                          arrival_time=time.monotonic() if arrival_time is None else arrival_time,
                          priority=priority)
        self.scheduler.add(request)
        self._num_prompt_tokens_total += len(prompt_token_ids)

    def abort(self, req_ids: Iterable[str]) -> list[RequestOutput]:
        """Drops the requests wherever they are and frees their blocks at once."""
        outputs = (self.scheduler.abort(req_id) for req_id in req_ids)
        return [output for output in outputs if output is not None]

    def step(self) -> list[RequestOutput]:
        started_at = time.monotonic()
        scheduler_output = self.scheduler.schedule()
        model_output = self.runner.execute(scheduler_output)
        outputs = self.scheduler.update(scheduler_output, model_output)
        self._num_generation_tokens_total += len(model_output.sampled_token_ids)
        self.last_step = StepSummary(
            started_at=started_at, num_batched_tokens=scheduler_output.num_batched_tokens,
            admitted_req_ids=tuple(r.req_id for r in scheduler_output.new_requests))
        return outputs

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> EngineStats:
        s = self.scheduler.stats
        return EngineStats(
            num_running=s.num_running, num_waiting=s.num_waiting,
            num_free_blocks=s.num_free_blocks, num_blocks=s.num_total_blocks,
            num_evictable_blocks=s.num_evictable_blocks,
            num_used_blocks=s.num_total_blocks - s.num_free_blocks,
            kv_cache_usage=s.kv_cache_usage, prefix_cache_queries=s.prefix_cache_queries,
            prefix_cache_hits=s.prefix_cache_hits, num_preemptions=s.num_preemptions_total,
            prompt_tokens_total=self._num_prompt_tokens_total,
            generation_tokens_total=self._num_generation_tokens_total)


def _max_model_len(model_config: ModelConfig, source: ModelSource) -> int:
    """The context window: the model's own, unless the user asked for a shorter one."""
    model_len = source.arch.max_position_embeddings
    if model_config.max_model_len is None:
        return model_len
    if model_config.max_model_len > model_len:
        raise ValueError(f"--max-model-len {model_config.max_model_len} is beyond the model's "
                         f"context window ({model_len} tokens)")
    return model_config.max_model_len


def _with_extra_eos(params: SamplingParams, info: EngineInfo) -> SamplingParams:
    """Models with several end-of-sequence ids (Llama 3) stop on any of them."""
    if params.ignore_eos or len(info.eos_token_ids) <= 1:
        return params
    extra = tuple(t for t in info.eos_token_ids[1:] if t not in params.stop_token_ids)
    return replace(params, stop_token_ids=params.stop_token_ids + extra) if extra else params
