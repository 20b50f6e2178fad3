"""ModelRunner: owns the model, the KV pool and the sampler, and runs one step at a time.

    execute(SchedulerOutput)
      -> forget finished / preempted requests, remember new ones (sampling state, history)
      -> prepare_inputs -> model.forward -> logits of the sampled rows -> sampler
      -> ModelOutput (and each sampled token appended to its request's history)

The history feeds the penalties and the seeded noise; the runner keeps its own copy so
nothing else has to send it every step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from server.config import CacheConfig, ModelConfig
from server.engine.inputs import prepare_inputs
from server.engine.models.llama import LlamaModel
from server.engine.ops import Ops
from server.engine.ops.torch_ref import TorchOps
from server.engine.sampler import RequestSamplingState, Sampler
from server.engine.weights import ModelSource, iter_weights, resolve_model
from server.kvcache.kv_pool import KVPool
from server.scheduler.output import ModelOutput, NewRequestData, SchedulerOutput

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class UnknownRequestError(ValueError):
    """A step samples for a request the runner was never told about (no NewRequestData)."""


def resolve_device(name: str) -> torch.device:
    """"auto": cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on a GPU, float32 on CPU (where bf16 matmuls are slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


class ModelRunner:
    def __init__(self, source: ModelSource, *, dtype: torch.dtype, device: torch.device | str,
                 block_size: int, num_blocks: int | None = None,
                 kv_cache_tokens: int | None = None, memory_fraction: float | None = None,
                 ops: Ops | None = None, seed: int = 0) -> None:
        """Loads the weights, then sizes the KV pool from num_blocks, kv_cache_tokens or
        memory_fraction (of the memory still free after the weights); see KVPool.sized."""
        self.source = source
        self.arch = source.arch
        self.dtype = dtype
        self.device = torch.device(device)
        self.ops: Ops = ops if ops is not None else TorchOps()
        self.model = LlamaModel(self.arch, dtype=dtype, device=self.device)
        self.model.load_weights(iter_weights(source, dtype=dtype, device=self.device))
        self.kv_pool = KVPool.sized(
            num_layers=self.arch.num_layers, block_size=block_size,
            num_kv_heads=self.arch.num_kv_heads, head_dim=self.arch.head_dim, dtype=dtype,
            device=self.device, num_blocks=num_blocks, kv_cache_tokens=kv_cache_tokens,
            memory_fraction=memory_fraction)
        self.sampler = Sampler(device=self.device, seed=seed)
        self._requests: dict[str, RequestSamplingState] = {}

    @classmethod
    def from_config(cls, model_config: ModelConfig, cache_config: CacheConfig, *,
                    source: ModelSource | None = None, ops: Ops | None = None) -> "ModelRunner":
        """Resolves the model (unless given), picks device and dtype ("auto": cuda + bf16
        when a GPU is present, else cpu + fp32) and sizes the pool from cache_config."""
        device = resolve_device(model_config.device)
        return cls(source if source is not None else resolve_model(model_config.model),
                   dtype=resolve_dtype(model_config.dtype, device), device=device,
                   block_size=cache_config.block_size, num_blocks=cache_config.num_blocks,
                   kv_cache_tokens=cache_config.kv_cache_tokens,
                   memory_fraction=cache_config.memory_fraction, ops=ops,
                   seed=model_config.seed)

    @property
    def block_size(self) -> int:
        return self.kv_pool.block_size

    @property
    def num_blocks(self) -> int:
        return self.kv_pool.num_blocks

    @property
    def num_tracked_requests(self) -> int:
        return len(self._requests)

    def execute(self, scheduler_output: SchedulerOutput) -> ModelOutput:
        """Runs one step; returns one token per scheduled request with sample=True, in
        scheduled order."""
        self.update_requests(scheduler_output)
        if scheduler_output.is_empty:
            return ModelOutput(req_ids=(), sampled_token_ids=())
        req_ids, logits = self.forward_logits(scheduler_output)
        if not req_ids:
            return ModelOutput(req_ids=(), sampled_token_ids=())
        states = [self._state(req_id) for req_id in req_ids]
        sampled = self.sampler.sample(logits, states)
        for state, token_id in zip(states, sampled.sampled_token_ids):
            state.output_token_ids.append(token_id)
        return ModelOutput(req_ids=req_ids, sampled_token_ids=sampled.sampled_token_ids,
                           logprobs=sampled.logprobs)

    def forward_logits(self, scheduler_output: SchedulerOutput
                       ) -> tuple[tuple[str, ...], torch.Tensor]:
        """The forward pass alone (KV written, nothing sampled, no request state touched):
        the sampled req_ids and their float32 logits [num sampled, vocab]."""
        inputs = prepare_inputs(scheduler_output, block_size=self.block_size,
                                device=self.device)
        hidden = self.model.forward(inputs.input_ids, inputs.positions, self.kv_pool.kv_cache,
                                    inputs.attn, self.ops)
        logits = self.model.compute_logits(hidden[inputs.sample_indices])
        return inputs.sampled_req_ids, logits

    def update_requests(self, scheduler_output: SchedulerOutput) -> None:
        """Drops finished and preempted requests, then (re)adds the new ones: a preempted
        request comes back as new, with its history so far."""
        self._forget(scheduler_output.finished_req_ids)
        self._forget(scheduler_output.preempted_req_ids)
        for new in scheduler_output.new_requests:
            self._requests[new.req_id] = _sampling_state(new)

    def _forget(self, req_ids: Iterable[str]) -> None:
        for req_id in req_ids:
            self._requests.pop(req_id, None)

    def _state(self, req_id: str) -> RequestSamplingState:
        try:
            return self._requests[req_id]
        except KeyError:
            raise UnknownRequestError(
                f"request {req_id!r} is sampled but was never sent as a new request") from None


def _sampling_state(new: NewRequestData) -> RequestSamplingState:
    return RequestSamplingState(sampling_params=new.sampling_params,
                                prompt_token_ids=tuple(new.prompt_token_ids),
                                output_token_ids=list(new.output_token_ids))
