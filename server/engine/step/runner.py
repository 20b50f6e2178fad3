"""ModelRunner: owns the model, the KV pool and the sampler, and runs one step at a time.

    launch(SchedulerOutput) -> InFlightStep       resolve(InFlightStep) -> ModelOutput
      -> forget finished / preempted requests, remember new ones (sampling state, history)
      -> decode-only step that fits a captured bucket: replay its CUDA graph
         otherwise: prepare_inputs -> model.forward -> logits of the sampled rows
         (pending inputs written on the device from the previous step's sampled ids)
      -> rows that follow a grammar: their bitmask filled on the host while the device
         runs the forward pass (after the previous step's tokens reach the matchers),
         then applied to their logits
      -> sampler (all plain-greedy rows: one argmax; rows whose token needs no history
         (no penalty, seed or logprobs; biases allowed): sampled on the device; both left
         there, so the host does not wait) -> InFlightStep
      -> prompt logprobs of the prompt rows of requests that want them (prompt_logprobs.py;
         such a step runs eagerly), on their way to the host beside the sampled ids
    resolve waits for the ids and appends each to its request's history;
    execute = resolve(launch(...)).

The history feeds the penalties and the seeded noise; the runner keeps its own copy so
nothing else has to send it every step.

Ops: on a GPU, our compiled kernels (CudaOps; from the engine directory's cubins and
tuning when the model is one) for bf16/fp16 models with a head_dim the kernels cover;
TorchOps otherwise (CPU, float32). CUDA graphs need CudaOps and are off with enforce_eager.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

from server.config import CacheConfig, ModelConfig
from server.engine.step.async_output import InFlightStep, TokenFeedback
from server.engine.step.bad_words import bans_tokens
from server.engine.step.cuda_graphs import DecodeGraphRunner, decode_graph_runner
from server.engine.step.inputs import host_to_device, prepare_inputs
from server.engine.step.prompt_logprobs import (PendingPromptLogprobs, PromptLogprobsPlan,
                                                PromptLogprobTensors, compute_prompt_logprobs,
                                                plan_prompt_logprobs)
from server.engine.models.llama import LlamaModel
from server.engine.parallel.ipc_all_reduce import attach_ipc_all_reduce
from server.engine.parallel.shard_weights import shard_named
from server.engine.models.int_schemes import INT_ON_LOAD, quantize_on_load
from server.engine.models.quantization import QuantizationError, quantize_checkpoint
from server.engine.parallel.tensor_parallel import NO_TENSOR_PARALLEL, TensorParallel
from server.engine.fused.decode_stack import decode_stack_for
from server.engine.ops import Ops
from server.engine.gpu.ops_choice import (default_ops, engine_config, is_cuda_ops, resolve_device,
                                       resolve_dtype)
from server.engine.step.sampler import (MIN_TEMPERATURE, RequestSamplingState, Sampler,
                                   SamplingBatch, adjusted_logits)
from server.engine.loading.weights import ModelSource, iter_weights, resolve_model
from server.kvcache.kv_pool import KVPool, check_kv_cache_kernels, kv_cache_dtype_for
from server.scheduler.output import ModelOutput, NewRequestData, SchedulerOutput
from server.structured_output.timing import GrammarStepTimes

DEFAULT_GRAPH_BATCH_SIZE = 256  # graphs up to here unless the engine or caller says otherwise
logger = logging.getLogger("inflightd.engine")


class UnknownRequestError(ValueError):
    """A step samples for a request the runner was never told about (no NewRequestData)."""


class ModelRunner:
    def __init__(self, source: ModelSource, *, dtype: torch.dtype, device: torch.device | str,
                 block_size: int, num_blocks: int | None = None,
                 kv_cache_tokens: int | None = None, memory_fraction: float | None = None,
                 ops: Ops | None = None, seed: int = 0, enforce_eager: bool = False,
                 max_num_seqs: int | None = None, max_model_len: int | None = None,
                 quantization: str | None = None, kv_cache_dtype: str = "auto",
                 tp: TensorParallel = NO_TENSOR_PARALLEL) -> None:
        """Loads the weights (with tp, this rank's shard of them) (quantizing the linear
        layers' as they load, with quantization "fp8", "int8_wo" or "int4_wo"; a quantized
        checkpoint's are read as it stores them), then sizes the KV pool from num_blocks,
        kv_cache_tokens or memory_fraction (of the memory still free after the weights);
        see KVPool.sized. The pool holds kv_cache_dtype ("auto": the model's dtype; "fp8":
        e4m3).

        On a GPU with CudaOps and not enforce_eager, decode steps of up to max_num_seqs
        requests (default: the engine's max_batch_size, else 256) replay CUDA graphs covering
        contexts up to max_model_len (default: the model's); capture_graphs() captures them
        now, else the first decode step does."""
        self.source = source
        self.arch = source.arch
        self.dtype = dtype
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.ops: Ops = ops if ops is not None else default_ops(source, dtype=dtype,
                                                                 device=self.device)
        packed = source.packed_format
        if quantization not in (None, source.quantization) and packed is not None:
            raise QuantizationError(f"the checkpoint is quantized already ({packed.method}); "
                                    f"leave out --quantization {quantization}")
        self.quantization = quantization or source.quantization
        cache_dtype = kv_cache_dtype_for(kv_cache_dtype, dtype)
        if is_cuda_ops(self.ops):
            check_kv_cache_kernels(cache_dtype, self.device)
        self.model = LlamaModel(self.arch, dtype=dtype, device=self.device,
                                quantization=self.quantization, tp=tp,
                                int_scheme=packed.int_scheme() if packed else None)
        self.model.load_weights(self._weights(source, tp), stored_fp8=source.stores_fp8_weights
                                or (tp.enabled and self.quantization == "fp8"))
        kv_heads = self.model.shard.kv_heads
        self.kv_pool = KVPool.sized(
            num_layers=self.arch.num_layers, block_size=block_size,
            num_kv_heads=kv_heads[1] - kv_heads[0], head_dim=self.arch.head_dim,
            dtype=cache_dtype, device=self.device, num_blocks=num_blocks, kv_cache_tokens=kv_cache_tokens,
            memory_fraction=memory_fraction)
        self.sampler = Sampler(device=self.device, seed=seed)
        self._requests: dict[str, RequestSamplingState] = {}
        self._prompt_wanted: dict[str, int] = {}  # req_id -> top-k, until its prompt is done
        self._feedback = TokenFeedback()
        self._unresolved: list[InFlightStep] = []  # launched, tokens not in the histories
        self.grammars = None  # GrammarMatchers, set by the engine when it has a compiler
        self.grammar_times = GrammarStepTimes()
        self.graphs: DecodeGraphRunner | None = None
        self._graph_options = dict(enforce_eager=enforce_eager, max_model_len=max_model_len,
                                   max_batch_size=max_num_seqs or _engine_batch_size(source))
        self._ranks_connected = False
        if not tp.enabled:
            self.connect_ranks()

    @classmethod
    def from_config(cls, model_config: ModelConfig, cache_config: CacheConfig, *,
                    source: ModelSource | None = None, ops: Ops | None = None,
                    max_num_seqs: int | None = None,
                    max_model_len: int | None = None,
                    tp: TensorParallel = NO_TENSOR_PARALLEL) -> "ModelRunner":
        """Resolves the model (unless given), picks device and dtype ("auto": cuda + bf16
        when a GPU is present, or the engine directory's dtype, else cpu + fp32) and sizes
        the pool from cache_config."""
        device = resolve_device(model_config.device)
        source = source if source is not None else resolve_model(model_config.model)
        engine = engine_config(source)
        dtype = resolve_dtype(model_config.dtype, device,
                              engine_dtype=engine.dtype if engine else None)
        return cls(source, dtype=dtype, device=device,
                   block_size=cache_config.block_size, num_blocks=cache_config.num_blocks,
                   kv_cache_tokens=cache_config.kv_cache_tokens,
                   memory_fraction=cache_config.memory_fraction, ops=ops,
                   seed=model_config.seed, enforce_eager=model_config.enforce_eager,
                   max_num_seqs=max_num_seqs,
                   max_model_len=max_model_len or model_config.max_model_len,
                   quantization=model_config.quantization,
                   kv_cache_dtype=cache_config.kv_cache_dtype, tp=tp)

    def _weights(self, source: ModelSource, tp: TensorParallel):
        """The (name, tensor) stream this rank loads: its shard of each tensor, quantized
        where the weights are quantized as they load."""
        shard, on_load = self.model.shard, self.model.int_scheme
        on_load = on_load if self.quantization in INT_ON_LOAD else None
        fp8 = self.quantization == "fp8" and not source.stores_fp8_weights
        if tp.enabled and (fp8 or on_load):
            # quantized whole, then cut: a row-parallel shard keeps the row scales one rank
            # would have (so this rank reads whole tensors)
            weights = iter_weights(source, dtype=self.dtype, device=self.device)
            weights = quantize_checkpoint(weights) if fp8 else quantize_on_load(on_load, weights)
            return shard_named(self.arch, shard, weights)
        # each rank reads its own part of each tensor
        weights = iter_weights(source, dtype=self.dtype, device=self.device, shard=shard)
        return quantize_on_load(on_load, weights) if on_load else weights

    @property
    def quantization_name(self) -> str | None:
        """What the weights run as: --quantization's value, or a quantized checkpoint's
        method (gptq, awq, w8a8, fp8)."""
        packed = self.source.packed_format
        return self.quantization or (packed.method if packed else None)

    @property
    def block_size(self) -> int:
        return self.kv_pool.block_size

    @property
    def num_blocks(self) -> int:
        return self.kv_pool.num_blocks

    @property
    def num_tracked_requests(self) -> int:
        return len(self._requests)

    def connect_ranks(self) -> None:
        """Once: under tensor parallelism our all-reduce where every rank can run it
        (collective: every rank calls this at the same point, after all have built their
        runners), then the decode graphs where they can run."""
        if self._ranks_connected:
            return
        self._ranks_connected = True
        tp = attach_ipc_all_reduce(self.model.tp, self.ops, self.device)
        self.model.use_tensor_parallel(tp)
        if is_cuda_ops(self.ops):
            self.model.decode_stack = decode_stack_for(self.model, self.ops.library,
                                                       self.kv_pool.kv_cache)
        self.graphs = decode_graph_runner(self.model, self.kv_pool.kv_cache, self.ops,
                                          block_size=self.block_size, **self._graph_options)

    def capture_graphs(self) -> None:
        """Captures the decode graphs now (a no-op without graphs, or when captured);
        collective under tensor parallelism (every rank's warm-up all-reduces meet)."""
        self.connect_ranks()
        if self.graphs is not None and not self.graphs.captured:
            self.graphs.capture()

    def execute(self, scheduler_output: SchedulerOutput) -> ModelOutput:
        """Runs one step; returns one token per scheduled request with sample=True, in
        scheduled order."""
        return self.resolve(self.launch(scheduler_output))

    @torch.inference_mode()
    def launch(self, scheduler_output: SchedulerOutput) -> InFlightStep:
        """Queues one step on the device and returns without waiting for it when no
        sampled row needs its request's history (penalties, seeds and logprobs read it on
        the host, so such a step waits for the previous step and for this one)."""
        self.update_requests(scheduler_output)
        if scheduler_output.is_empty:
            return InFlightStep.done(ModelOutput(req_ids=(), sampled_token_ids=()))
        plan = self._plan_prompt_logprobs(scheduler_output)
        req_ids, logits, prompt = self.forward_logits(scheduler_output, prompt_plan=plan)
        # its prompt logprobs start for the host now, behind the forward pass
        pending = None if prompt is None else PendingPromptLogprobs(plan, prompt)
        if not req_ids:
            return self._launched(InFlightStep.done(
                ModelOutput(req_ids=(), sampled_token_ids=()), prompt_logprobs=pending))
        self._apply_grammars(req_ids, logits)
        states = [self._state(req_id) for req_id in req_ids]
        if all(_is_plain_greedy(state) for state in states):
            # What the sampler does for such rows, minus building its per-step tensors.
            token_ids = self.ops.argmax(logits)
            self._remember(req_ids, token_ids)
            return self._launched(InFlightStep.copying(req_ids, token_ids,
                                                       prompt_logprobs=pending))
        if all(_needs_no_history(state) for state in states):
            # temperature, top-k, top-p and min-p read only the logits: sampled on the device
            batch = SamplingBatch.build(states, vocab_size=logits.shape[-1],
                                        device=logits.device)
            token_ids = self.sampler.sample_tokens(adjusted_logits(logits, batch), batch)
            self._remember(req_ids, token_ids)
            return self._launched(InFlightStep.copying(req_ids, token_ids,
                                                       prompt_logprobs=pending))
        self._resolve_unresolved()  # the penalties and seeds need its tokens
        sampled = self.sampler.sample(logits, states)
        self._remember(req_ids, torch.tensor(sampled.sampled_token_ids,
                                                      dtype=torch.int64, device=self.device))
        return self._launched(InFlightStep.done(ModelOutput(
            req_ids=req_ids, sampled_token_ids=sampled.sampled_token_ids,
            logprobs=sampled.logprobs), prompt_logprobs=pending))

    @torch.inference_mode()
    def follow(self, scheduler_output: SchedulerOutput) -> None:
        """A worker rank's step under tensor parallelism: the same forward as rank 0 (the
        collectives pair up), and rank 0's sampled tokens for the next step's inputs."""
        self.update_requests(scheduler_output)
        if scheduler_output.is_empty:
            return
        req_ids, _, _ = self.forward_logits(
            scheduler_output, prompt_plan=self._plan_prompt_logprobs(scheduler_output))
        if req_ids:
            self._remember(req_ids, torch.empty(len(req_ids), dtype=torch.int64,
                                                device=self.device))

    def _remember(self, req_ids: tuple[str, ...], token_ids: torch.Tensor) -> None:
        """The step's tokens feed the next step's pending inputs; under tensor parallelism
        every rank takes rank 0's (its own grammar masks and sampler decide them)."""
        self.model.tp.broadcast_from_first(token_ids)
        self._feedback.remember(req_ids, token_ids)

    def resolve(self, step: InFlightStep) -> ModelOutput:
        """Waits for a launched step's tokens and appends them to the request histories
        and grammar matchers (once); requests forgotten since are skipped."""
        output = step.output()
        if step in self._unresolved:  # its tokens are not in the histories yet
            self._unresolved.remove(step)
            for req_id, token_id in zip(output.req_ids, output.sampled_token_ids):
                state = self._requests.get(req_id)
                if state is not None:
                    state.output_token_ids.append(token_id)
            if self.grammars is not None and self.grammars.num_running:
                with self.grammar_times.accepting():
                    self.grammars.accept_many(output.req_ids, output.sampled_token_ids)
        return output

    def _resolve_unresolved(self) -> None:
        while self._unresolved:
            self.resolve(self._unresolved[0])

    def _apply_grammars(self, req_ids: tuple[str, ...], logits: torch.Tensor) -> None:
        """Masks the rows of requests that follow a grammar. Their matchers need every
        token sampled so far: with a step still in flight (async scheduling) the host
        waits for it here, while the device already runs this step's forward pass."""
        if self.grammars is None or not self.grammars.follows_any(req_ids):
            return
        with self.grammar_times.waiting():
            self._resolve_unresolved()
        rows = self.grammars.rows_to_mask(req_ids)  # after the wait: some may have ended
        with self.grammar_times.filling(len(rows)):
            step_mask = self.grammars.fill(req_ids, rows) if rows else None
        if step_mask is not None:
            # the bitmask buffer is pinned: the next fill waits for this step (above)
            bitmask = step_mask.bitmask.to(self.device, non_blocking=True)
            rows = host_to_device(torch.tensor(step_mask.rows, dtype=torch.int64),
                                  self.device)
            self.ops.apply_token_bitmask(logits, bitmask, rows)

    def _launched(self, step: InFlightStep) -> InFlightStep:
        self._unresolved.append(step)
        return step

    @torch.inference_mode()
    def forward_logits(self, scheduler_output: SchedulerOutput, *, allow_graph: bool = True,
                       prompt_plan: PromptLogprobsPlan | None = None
                       ) -> tuple[tuple[str, ...], torch.Tensor, PromptLogprobTensors | None]:
        """The forward pass alone (KV written, nothing sampled, no request state touched):
        the sampled req_ids and their float32 logits [num sampled, vocab], and the prompt
        logprobs of prompt_plan's rows (None without one). A decode-only step without
        prompt rows replays a CUDA graph when it can (and allow_graph); the logits are
        then a view of the graph's output, valid until the next step."""
        self.connect_ranks()  # a rank's first step, where nothing connected them before
        scheduled = scheduler_output.scheduled
        if (allow_graph and prompt_plan is None and self.graphs is not None
                and scheduler_output.is_decode_only and self.graphs.can_run(scheduled)):
            return *self._replay(scheduled), None
        inputs = prepare_inputs(scheduler_output, block_size=self.block_size,
                                device=self.device,
                                rope_table_rows=self.model.arch.rope_table_rows)
        self._feedback.write_into(inputs.input_ids, rows=inputs.pending_rows,
                                  req_ids=inputs.pending_req_ids)
        hidden = self.model.forward(inputs.input_ids, inputs.positions, self.kv_pool.kv_cache,
                                    inputs.attn, self.ops)
        logits = self.model.compute_logits(hidden[inputs.sample_indices], self.ops)
        prompt = None if prompt_plan is None else compute_prompt_logprobs(
            hidden, prompt_plan, lambda rows: self.model.compute_logits(rows, self.ops),
            vocab_size=self.arch.vocab_size)
        return inputs.sampled_req_ids, logits, prompt

    def _plan_prompt_logprobs(self, scheduler_output: SchedulerOutput
                              ) -> PromptLogprobsPlan | None:
        """This step's prompt-logprob rows (None when it has none); requests whose prompt
        it finishes stop wanting them."""
        if not self._prompt_wanted:
            return None
        plan = plan_prompt_logprobs(scheduler_output.scheduled, self._prompt_wanted,
                                    lambda req_id: self._requests[req_id].prompt_token_ids)
        for req_id in plan.completed_req_ids:
            del self._prompt_wanted[req_id]
        return plan if plan.rows else None

    def _replay(self, scheduled: Sequence) -> tuple[tuple[str, ...], torch.Tensor]:
        pending = [(row, s.req_id) for row, s in enumerate(scheduled) if s.pending_input]

        def feed_pending(input_ids: torch.Tensor) -> None:
            self._feedback.write_into(input_ids, rows=[row for row, _ in pending],
                                      req_ids=[req_id for _, req_id in pending])

        logits = self.graphs.run(scheduled, before_replay=feed_pending if pending else None)
        rows = [row for row, s in enumerate(scheduled) if s.sample]
        req_ids = tuple(scheduled[row].req_id for row in rows)
        if len(rows) == len(scheduled):
            return req_ids, logits
        return req_ids, logits[host_to_device(torch.tensor(rows, dtype=torch.int64),
                                              self.device)]

    def update_requests(self, scheduler_output: SchedulerOutput) -> None:
        """Drops finished and preempted requests, then (re)adds the new ones: a preempted
        request comes back as new, with its history so far."""
        self._forget(scheduler_output.finished_req_ids)
        self._forget(scheduler_output.preempted_req_ids)
        if self.grammars is not None:
            for req_id in scheduler_output.finished_req_ids:
                self.grammars.release(req_id)
            for req_id in scheduler_output.preempted_req_ids:
                self.grammars.stop(req_id)
        for new in scheduler_output.new_requests:
            self._requests[new.req_id] = _sampling_state(new)
            # a request resumed with tokens out has had its prompt logprobs (the scheduler
            # hands them out with the first token, and resumes none with a token pending)
            if new.sampling_params.prompt_logprobs is not None and not new.output_token_ids:
                self._prompt_wanted[new.req_id] = new.sampling_params.prompt_logprobs
            if self.grammars is not None:
                self.grammars.start(new.req_id, new.output_token_ids)
        if self.graphs is not None and scheduler_output.new_requests:
            self.graphs.forget(new.req_id for new in scheduler_output.new_requests)

    def _forget(self, req_ids: Iterable[str]) -> None:
        for req_id in req_ids:
            self._requests.pop(req_id, None)
            self._prompt_wanted.pop(req_id, None)
        if self.graphs is not None:
            self.graphs.forget(req_ids)

    def _state(self, req_id: str) -> RequestSamplingState:
        try:
            return self._requests[req_id]
        except KeyError:
            raise UnknownRequestError(
                f"request {req_id!r} is sampled but was never sent as a new request") from None


def _is_plain_greedy(state: RequestSamplingState) -> bool:
    """Greedy with no penalty, logit_bias or logprobs: the argmax of the raw logits."""
    return (state.sampling_params.temperature < MIN_TEMPERATURE
            and not state.sampling_params.logit_bias
            and _reads_only_the_logits(state.sampling_params))


def _needs_no_history(state: RequestSamplingState) -> bool:
    """No penalty (they count earlier tokens), no seed (its noise is keyed by the number of
    tokens so far) and no logprobs (read back on the host): the token depends on this
    step's logits alone, so nothing waits for the step in flight."""
    return state.sampling_params.seed is None and _reads_only_the_logits(state.sampling_params)


def _reads_only_the_logits(p) -> bool:
    # token bans (bad_words, min_tokens) read the history: such rows take the full path
    return (p.logprobs is None and not p.presence_penalty and not p.frequency_penalty
            and p.repetition_penalty == 1.0 and not bans_tokens(p))


def _sampling_state(new: NewRequestData) -> RequestSamplingState:
    return RequestSamplingState(sampling_params=new.sampling_params,
                                prompt_token_ids=tuple(new.prompt_token_ids),
                                output_token_ids=list(new.output_token_ids))


def _engine_batch_size(source: ModelSource) -> int:
    """The decode graphs' largest batch: the engine directory's max_batch_size, if any."""
    engine = engine_config(source)
    return engine.max_batch_size if engine else DEFAULT_GRAPH_BATCH_SIZE
