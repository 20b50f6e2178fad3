"""Settings, as frozen dataclasses validated on construction.

Each check raises ValueError with a message that names the option a user would change.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# --quantization values: fp8 (server.engine.models.quantization); int8_wo, int4_wo: weights
# held as 8- or 4-bit integers, rounded to nearest as they load; w8a8: int8 weights rounded
# as they load and int8 activations per token, without SmoothQuant's calibration
# (server.engine.models.int_schemes)
QUANTIZATIONS = ("fp8", "int8_wo", "int4_wo", "w8a8")
# --kv-cache-dtype values. auto: the model's dtype; fp8 (or fp8_e4m3, vLLM's other name for
# it): e4m3, one byte a value, saturated to +-448 without a scale (server.kvcache.kv_pool).
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache. Give num_blocks directly, or let the engine derive it from
    kv_cache_tokens or a memory fraction once it knows the model's size."""

    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_tokens: int | None = None
    memory_fraction: float | None = None
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        _require(self.kv_cache_dtype in KV_CACHE_DTYPES,
                 f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                 f"got {self.kv_cache_dtype!r}")
        _require(self.block_size in (1, 2, 4, 8, 16, 32, 64, 128),
                 f"--block-size must be a power of two from 1 to 128, got {self.block_size}")
        _require(self.num_blocks is None or self.num_blocks >= 1,
                 f"num_blocks must be >= 1, got {self.num_blocks}")
        _require(self.kv_cache_tokens is None or self.kv_cache_tokens >= self.block_size,
                 f"--kv-cache-tokens must be at least one block ({self.block_size}), "
                 f"got {self.kv_cache_tokens}")
        _require(self.memory_fraction is None or 0 < self.memory_fraction <= 1,
                 f"--memory-fraction must be in (0, 1], got {self.memory_fraction}")
        _require(self.kv_cache_tokens is None or self.memory_fraction is None,
                 "give --kv-cache-tokens or --memory-fraction, not both")


KV_ADMISSIONS = ("optimistic", "guaranteed")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    # Most prompt (prefill) tokens one step computes, beside its decodes, which are
    # scheduled first (server/scheduler/budget.py): a step's time, so every running
    # request's inter-token gap, grows with it; a long prompt takes more steps under a
    # smaller cap (time to first token). None: max_num_batched_tokens. docs/scheduling.md.
    max_prefill_tokens: int | None = None
    max_model_len: int = 2048
    policy: str = "fcfs"  # "fcfs" or "priority"
    # "optimistic": admit while the next chunk fits, preempt when blocks run out (vLLM's,
    # TensorRT-LLM's MAX_UTILIZATION); "guaranteed": admit only while every running
    # request can reach its max_tokens, so none is ever preempted (GUARANTEED_NO_EVICT)
    kv_admission: str = "optimistic"
    # Schedule step k+1 while the device runs step k. None: on when the engine runs on a
    # GPU (on a CPU every op already waits, so there is nothing to overlap).
    async_scheduling: bool | None = None
    # Every layer of the model attends within this many keys (a sliding window): a
    # request's blocks before its window go back to the pool. Set by the engine.
    kv_window: int | None = None
    # LongRoPE (Phi-3 long-context): requests longer than this rotate with the model's
    # second (long) table, their KV cached apart, recomputed when they grow past it. Set by
    # the engine.
    long_rope_threshold: int | None = None

    def __post_init__(self) -> None:
        _require(self.max_num_seqs >= 1, f"--max-num-seqs must be >= 1, got {self.max_num_seqs}")
        _require(self.kv_window is None or self.kv_window >= 1,
                 f"kv_window must be >= 1, got {self.kv_window}")
        _require(self.max_num_batched_tokens >= 1,
                 f"--max-num-batched-tokens must be >= 1, got {self.max_num_batched_tokens}")
        _require(self.max_prefill_tokens is None
                 or 1 <= self.max_prefill_tokens <= self.max_num_batched_tokens,
                 f"--max-prefill-tokens must be in 1..{self.max_num_batched_tokens} (at most "
                 f"--max-num-batched-tokens; leave it out for no separate cap), "
                 f"got {self.max_prefill_tokens}")
        _require(self.max_model_len >= 1,
                 f"--max-model-len must be >= 1, got {self.max_model_len}")
        _require(self.policy in ("fcfs", "priority"),
                 f"scheduling policy must be 'fcfs' or 'priority', got {self.policy!r}")
        _require(self.kv_admission in KV_ADMISSIONS,
                 f"--kv-admission must be one of {', '.join(KV_ADMISSIONS)}, "
                 f"got {self.kv_admission!r}")

    @property
    def prefill_token_cap(self) -> int:
        """Prefill tokens a step may compute (max_prefill_tokens, or the whole budget)."""
        if self.max_prefill_tokens is None:
            return self.max_num_batched_tokens
        return self.max_prefill_tokens


@dataclass(frozen=True)
class ModelConfig:
    """Which weights to run and how. `model` is a local Hugging Face directory, an engine
    directory, `dummy:<shape>` for random weights, or the default model's name."""

    model: str = DEFAULT_MODEL
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    max_model_len: int | None = None  # None: the model's own context length
    seed: int = 0
    enforce_eager: bool = False
    # "fp8": linear weights and activations in FP8 (server.engine.models.quantization);
    # "int8_wo" / "int4_wo": weights only, as integers; "w8a8": int8 weights and activations.
    # None: none, unless the engine
    # directory was built with one or the checkpoint is quantized (GPTQ, AWQ, ...).
    quantization: str | None = None
    # ranks the model is split over (server/engine/parallel/): one process per rank, on
    # nnodes nodes; this is node node_rank, and rank 0 (node 0) meets the others at
    # master_addr:master_port
    tensor_parallel_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None

    def __post_init__(self) -> None:
        _require(self.tensor_parallel_size >= 1,
                 f"--tensor-parallel-size must be >= 1, got {self.tensor_parallel_size}")
        _require(self.nnodes >= 1 and 0 <= self.node_rank < self.nnodes,
                 f"--node-rank must be in 0..{self.nnodes - 1} (--nnodes {self.nnodes}), "
                 f"got {self.node_rank}")
        _require(self.tensor_parallel_size % self.nnodes == 0,
                 f"--tensor-parallel-size {self.tensor_parallel_size} must be a multiple of "
                 f"--nnodes {self.nnodes} (the same number of ranks on each node)")
        _require(self.nnodes == 1 or self.master_port is not None,
                 "several nodes need --master-addr and --master-port (node 0's rendezvous)")
        _require(self.quantization in (None, *QUANTIZATIONS),
                 f"--quantization must be one of {', '.join(QUANTIZATIONS)} (or left out; a "
                 f"GPTQ, AWQ or compressed-tensors checkpoint needs none), "
                 f"got {self.quantization!r}")
        _require(self.dtype in ("auto", "float32", "float16", "bfloat16"),
                 f"--dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        _require(self.device in ("auto", "cpu", "cuda"),
                 f"--device must be auto, cpu or cuda, got {self.device!r}")


KV_EVENT_TRANSPORTS = ("tcp://", "ipc://", "inproc://")


@dataclass(frozen=True)
class KVEventsConfig:
    """Publishing the prefix cache's changes as vLLM's KV-cache events
    (server/engine/service/kv_events.py). endpoint: the ZeroMQ PUB address, bound when its host is
    `*` (or ipc/inproc), else connected to (a subscriber that binds, as llm-d's indexer);
    replay_endpoint: a ROUTER address (always bound) that resends the batches after a
    sequence number; topic: the first frame of every message; buffer_steps: how many past
    batches replay can resend."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""
    buffer_steps: int = 10_000

    def __post_init__(self) -> None:
        for flag, address in (("--kv-events-endpoint", self.endpoint),
                              ("--kv-events-replay-endpoint", self.replay_endpoint)):
            if address is None:
                continue
            _require(address.startswith(KV_EVENT_TRANSPORTS),
                     f"{flag} must be a ZeroMQ address such as tcp://*:5557 "
                     f"(tcp://, ipc:// or inproc://), got {address!r}")
            _require(not address.startswith("tcp://") or address.rpartition(":")[2].isdigit(),
                     f"{flag} needs a port, as in tcp://*:5557, got {address!r}")
        _require(self.replay_endpoint != self.endpoint,
                 "--kv-events-replay-endpoint must differ from --kv-events-endpoint")
        _require(self.buffer_steps >= 1,
                 f"the KV-event replay buffer must hold >= 1 batch, got {self.buffer_steps}")
