"""EngineCore: the scheduler and the model runner, stepped together.

One step is schedule -> execute -> update. With async scheduling (on a GPU) the update of
step k comes after the launch of step k+1, so the host schedules and prepares while the
device computes. The engine process loops over `step()` while `has_unfinished()`; the
offline `LLM` calls it directly.

Requests with a grammar (structured outputs) wait aside in the scheduler while their grammar
compiles in a thread pool; each step first queues the ones whose grammar is ready, and
hands back as rejections those whose grammar failed to compile or timed out.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

from server.config import CacheConfig, ModelConfig, SchedulerConfig
from server.engine.step.async_output import InFlightStep
from server.engine.service.info import EngineInfo, EngineStats
from server.engine.gpu.ops_choice import resolve_device
from server.engine.parallel.tensor_parallel import check_shardable
from server.engine.service.workers import RunnerSpec, WorkerGroup, placement_of
from server.engine.step.runner import ModelRunner
from server.engine.loading.weights import ModelSource, resolve_model
from server.kvcache.events import KVCacheRecord, KVEventRecorder
from server.scheduler.errors import RequestRejectedError
from server.scheduler.output import RequestOutput, SchedulerOutput
from server.scheduler.request import Request, SamplingParams
from server.scheduler.scheduler import Scheduler
from server.structured_output.compiler import CompileResult, GrammarCompilerPool

logger = logging.getLogger("inflightd.engine")
# With only grammars compiling, the loop sleeps this long at most before it looks again
# (for new requests, aborts and stats).
GRAMMAR_IDLE_WAIT_S = 0.002


@dataclass(frozen=True)
class StepSummary:
    """What one step did, for metrics: when it started (time.monotonic(), the same clock in
    every process), how many tokens it computed, and which requests it admitted from the
    waiting queue (first admission or resumption after preemption)."""

    started_at: float
    num_batched_tokens: int
    admitted_req_ids: tuple[str, ...]
    grammar_compiles: tuple[CompileResult, ...] = ()  # finished or failed since the last step


class EngineCore:
    def __init__(self, *, model_config: ModelConfig, cache_config: CacheConfig,
                 scheduler_config: SchedulerConfig, source: ModelSource | None = None,
                 record_kv_events: bool = False) -> None:
        """record_kv_events: keep the prefix cache's changes for take_kv_events()."""
        source = source if source is not None else resolve_model(model_config.model)
        max_model_len = _max_model_len(model_config, source)
        scheduler_config = _within_engine_limits(scheduler_config, source)
        self.runner, self.workers = _start_runner(
            model_config, cache_config, source=source,
            max_num_seqs=scheduler_config.max_num_seqs, max_model_len=max_model_len)
        self.runner.capture_graphs()  # at startup, so the first decode step is not slow
        cache_config = replace(cache_config, num_blocks=self.runner.num_blocks,
                               kv_cache_tokens=None, memory_fraction=None)
        self._kv_events = KVEventRecorder() if record_kv_events else None
        self.scheduler = Scheduler(replace(scheduler_config, max_model_len=max_model_len,
                                           kv_window=source.arch.kv_window,
                                           long_rope_threshold=source.arch.long_rope_threshold),
                                   cache_config, kv_events=self._kv_events)
        arch = source.arch
        self.info = EngineInfo(
            model_name=source.name, vocab_size=arch.vocab_size, max_model_len=max_model_len,
            eos_token_ids=arch.eos_token_ids, num_kv_blocks=self.runner.num_blocks,
            block_size=self.runner.block_size,
            kv_cache_tokens=self.runner.num_blocks * self.runner.block_size,
            tokenizer_dir=str(source.tokenizer_dir) if source.tokenizer_dir else None,
            device=str(self.runner.device), dtype=str(self.runner.dtype).removeprefix("torch."),
            quantization=self.runner.quantization_name,
            kv_cache_dtype=str(self.runner.kv_pool.dtype).removeprefix("torch."))
        self.async_scheduling = (self.runner.device.type == "cuda"
                                 if scheduler_config.async_scheduling is None
                                 else scheduler_config.async_scheduling)
        self._in_flight: deque[tuple[SchedulerOutput, InFlightStep]] = deque()
        self._num_prompt_tokens_total = 0
        self._num_generation_tokens_total = 0
        self.last_step: StepSummary | None = None
        self._grammar_compiler: GrammarCompilerPool | None = None
        self._rejected: list[CompileResult] = []  # grammar failures not yet handed back

    def add_request(self, req_id: str, prompt_token_ids: list[int],
                    sampling_params: SamplingParams, *, arrival_time: float | None = None,
                    priority: int = 0) -> None:
        """Queues a request; raises RequestRejectedError when it could never run."""
        eos = self.info.eos_token_ids[0] if self.info.eos_token_ids else None
        grammar = sampling_params.grammar
        if grammar is not None and self.prepare_grammars() is None:
            raise RequestRejectedError(
                "structured_output_unavailable", "this model has no tokenizer, so its "
                "output cannot follow a grammar (response_format, tools, guided_*)")
        request = Request(req_id=req_id, prompt_token_ids=list(prompt_token_ids),
                          sampling_params=_with_extra_eos(sampling_params, self.info),
                          eos_token_id=eos,
                          arrival_time=time.monotonic() if arrival_time is None else arrival_time,
                          priority=priority)
        self.scheduler.add(request, awaits_grammar=grammar is not None)
        if grammar is not None:
            self._grammar_compiler.submit(req_id, grammar)
        self._num_prompt_tokens_total += len(prompt_token_ids)

    def prepare_grammars(self) -> GrammarCompilerPool | None:
        """The grammar compiler (its tokenizer loads in the background), made on first
        use; None when the model has no tokenizer."""
        if self._grammar_compiler is None and self.info.tokenizer_dir is not None:
            from server.structured_output.matchers import GrammarMatchers

            self._grammar_compiler = GrammarCompilerPool(
                self.info.tokenizer_dir, vocab_size=self.info.vocab_size,
                stop_token_ids=self.info.eos_token_ids)
            self.runner.grammars = GrammarMatchers(
                max_rows=self.scheduler.config.max_num_seqs,
                pin_memory=self.runner.device.type == "cuda")
        return self._grammar_compiler

    def take_kv_events(self) -> list[KVCacheRecord]:
        """The prefix cache's changes since the last call (none unless record_kv_events)."""
        return [] if self._kv_events is None else self._kv_events.drain()

    def take_rejections(self) -> list[CompileResult]:
        """Requests dropped because their grammar failed (code and message), once each."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def abort(self, req_ids: Iterable[str]) -> list[RequestOutput]:
        """Drops the requests wherever they are and frees their blocks at once."""
        req_ids = list(req_ids)
        if self._grammar_compiler is not None:
            for req_id in req_ids:
                self._grammar_compiler.cancel(req_id)
        outputs = (self.scheduler.abort(req_id) for req_id in req_ids)
        return [output for output in outputs if output is not None]

    def step(self) -> list[RequestOutput]:
        """Schedules and launches a step, then updates the scheduler with the oldest step
        in flight once its tokens are back: with async scheduling that is the previous
        step (the device runs this one meanwhile), else this one. Returns the outputs of
        the step that was updated."""
        started_at = time.monotonic()
        grammar_compiles = self._queue_compiled_grammars()
        scheduler_output = self.scheduler.schedule()
        self._in_flight.append((scheduler_output, self._launch(scheduler_output)))
        outputs = self._update(keep_in_flight=0 if scheduler_output.is_empty
                               else int(self.async_scheduling))
        self.last_step = StepSummary(
            started_at=started_at, num_batched_tokens=scheduler_output.num_batched_tokens,
            admitted_req_ids=tuple(r.req_id for r in scheduler_output.new_requests),
            grammar_compiles=grammar_compiles)
        return outputs

    def _launch(self, scheduler_output: SchedulerOutput) -> InFlightStep:
        if self.workers is None:
            return self.runner.launch(scheduler_output)
        self.workers.send(scheduler_output)  # the workers run the same step alongside
        try:
            return self.runner.launch(scheduler_output)
        except RuntimeError:
            self.workers.raise_if_dead(wait_s=2.0)  # a collective failed: name the worker
            raise

    def close(self) -> None:
        """Stops the tensor-parallel workers, if any (nothing else needs stopping)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    def _queue_compiled_grammars(self) -> tuple[CompileResult, ...]:
        """Requests whose grammar compiled join the waiting queue; those whose grammar
        failed are dropped and kept for take_rejections(). With nothing else to run, waits
        a moment for a compile instead of spinning."""
        compiler = self._grammar_compiler
        if compiler is None or not compiler.num_pending:
            return ()
        if self.scheduler.num_awaiting_grammar == self.scheduler.num_unfinished \
                and not self._in_flight:
            compiler.wait_for_any(GRAMMAR_IDLE_WAIT_S)
        batch = compiler.collect()
        for req_id, compiled in batch.compiled.items():
            self.runner.grammars.register(req_id, compiled)
            self.scheduler.grammar_ready(req_id)
        for failure in batch.failed:
            if self.scheduler.abort(failure.req_id) is not None:
                self._rejected.append(failure)
        return batch.results

    def _update(self, *, keep_in_flight: int) -> list[RequestOutput]:
        """Updates the scheduler with the oldest steps, once their tokens are back, until
        keep_in_flight steps are left (an empty step drains them all)."""
        outputs: list[RequestOutput] = []
        while len(self._in_flight) > keep_in_flight:
            scheduler_output, in_flight = self._in_flight.popleft()
            model_output = self.runner.resolve(in_flight)
            step_outputs = self.scheduler.update(scheduler_output, model_output)
            # the tokens that count: not those of max_tokens 0 or of requests gone since
            self._num_generation_tokens_total += sum(len(o.new_token_ids)
                                                     for o in step_outputs)
            outputs += step_outputs
        return outputs

    def set_async_scheduling(self, enabled: bool) -> None:
        """Switches async scheduling between runs (for benchmarks comparing both)."""
        if self._in_flight:
            raise RuntimeError("switch async scheduling only when no step is in flight "
                               "(after has_unfinished() turns False)")
        self.async_scheduling = enabled

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._in_flight)

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


def _start_runner(model_config: ModelConfig, cache_config: CacheConfig, *,
                  source: ModelSource, max_num_seqs: int, max_model_len: int
                  ) -> tuple[ModelRunner, WorkerGroup | None]:
    """Rank 0's runner in this process, and with tensor parallelism the workers' (started
    first: they wait for rank 0 at the rendezvous, then build theirs with its KV size)."""
    size = model_config.tensor_parallel_size
    if size == 1:
        return ModelRunner.from_config(model_config, cache_config, source=source,
                                       max_num_seqs=max_num_seqs,
                                       max_model_len=max_model_len), None
    check_shardable(source.arch, size)
    workers = WorkerGroup(placement_of(model_config),
                          device_type=resolve_device(model_config.device).type)
    try:
        runner = ModelRunner.from_config(model_config, cache_config, source=source,
                                         max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                                         tp=workers.join_as_first_rank())
        workers.build_runners(RunnerSpec(
            source=source, dtype=runner.dtype, block_size=runner.block_size,
            num_blocks=runner.num_blocks, quantization=runner.quantization,
            kv_cache_dtype=cache_config.kv_cache_dtype,
            enforce_eager=model_config.enforce_eager,
            max_num_seqs=max_num_seqs, max_model_len=max_model_len))
    except BaseException:
        workers.close()
        raise
    return runner, workers


def _max_model_len(model_config: ModelConfig, source: ModelSource) -> int:
    """The context window: the model's own, unless the user asked for less."""
    model_len = source.arch.max_position_embeddings
    if model_config.max_model_len is None:
        return model_len
    if model_config.max_model_len > model_len:
        raise ValueError(f"--max-model-len {model_config.max_model_len} is beyond the model's "
                         f"context window ({model_len} tokens)")
    return model_config.max_model_len


def _within_engine_limits(config: SchedulerConfig, source: ModelSource) -> SchedulerConfig:
    """An engine directory was built (graphs planned, kernels tuned) for at most
    max_batch_size requests at once: run no more than that."""
    if source.engine_dir is None:
        return config
    from server.engine.loading.engine_dir import read_engine_config

    max_batch_size = read_engine_config(source.engine_dir)[1].max_batch_size
    if config.max_num_seqs <= max_batch_size:
        return config
    logger.info("running at most %d requests at once: the engine in %s was built for "
                "--max-batch-size %d", max_batch_size, source.engine_dir, max_batch_size)
    return replace(config, max_num_seqs=max_batch_size)


def _with_extra_eos(params: SamplingParams, info: EngineInfo) -> SamplingParams:
    """Models with several end-of-sequence ids (Llama 3) stop on any of them. With
    min_tokens every one joins stop_token_ids, which the sampler bans until enough are out."""
    ends = info.eos_token_ids if params.min_tokens else info.eos_token_ids[1:]
    if params.ignore_eos or not ends:
        return params
    extra = tuple(t for t in ends if t not in params.stop_token_ids)
    return replace(params, stop_token_ids=params.stop_token_ids + extra) if extra else params
