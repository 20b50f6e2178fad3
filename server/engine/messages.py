"""The messages between the api process and the engine process, encoded with msgspec
(MessagePack). Never pickle: a socket only ever carries these types.

    api process                                   engine process
      PUSH  --- AddRequest | AbortRequests | StatsQuery | Shutdown --->  PULL
      PULL  <-- EngineReady | StartupFailed | StepOutputs | RequestRejected
                | StatsReply | EngineFailed -------------------------  PUSH

The engine's own EngineInfo and EngineStats are dataclasses next to EngineCore, in a module
that imports torch; the api process must not, so it reads them as the structs mirrored here
(`info_message` / `stats_message` copy them field by field).

Only the engine process's main (process.py) and the api's client import this module: the
engine core and runner do not, so they run where msgspec is absent.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from server.config import CacheConfig, ModelConfig, SchedulerConfig
from server.scheduler.output import RequestOutput
from server.scheduler.request import SamplingParams


class EngineInfoMessage(msgspec.Struct, frozen=True):
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


class EngineStatsMessage(msgspec.Struct, frozen=True):
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_blocks: int
    num_evictable_blocks: int  # free blocks still holding a cached prefix
    num_used_blocks: int
    kv_cache_usage: float  # 0..1
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    energy_joules: float | None = None  # GPU energy since start; None: no counter


def info_message(info: Any) -> EngineInfoMessage:
    """Copy the engine's EngineInfo dataclass (any object with those attributes)."""
    return msgspec.convert(info, EngineInfoMessage, from_attributes=True)


def stats_message(stats: Any) -> EngineStatsMessage:
    return msgspec.convert(stats, EngineStatsMessage, from_attributes=True)


# ---- what the engine process is started with (passed as JSON on its command line) ----

class EngineProcessArgs(msgspec.Struct, frozen=True):
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    input_address: str  # the api's PUSH binds here; the engine's PULL connects
    output_address: str  # the api's PULL binds here; the engine's PUSH connects
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (server/logging_setup.py)


# ---- api -> engine ----

class AddRequest(msgspec.Struct, frozen=True, tag="add"):
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    priority: int = 0


class AbortRequests(msgspec.Struct, frozen=True, tag="abort"):
    req_ids: list[str]


class StatsQuery(msgspec.Struct, frozen=True, tag="stats"):
    query_id: int


class Shutdown(msgspec.Struct, frozen=True, tag="shutdown"):
    pass


EngineInput = Union[AddRequest, AbortRequests, StatsQuery, Shutdown]


# ---- engine -> api ----

class EngineReady(msgspec.Struct, frozen=True, tag="ready"):
    info: EngineInfoMessage


class StartupFailed(msgspec.Struct, frozen=True, tag="startup_failed"):
    message: str


class StepInfo(msgspec.Struct, frozen=True):
    """The step behind a StepOutputs, for the api's metrics (see core.StepSummary)."""

    started_at: float  # time.monotonic(): one clock for both processes
    num_batched_tokens: int
    admitted_req_ids: list[str]  # taken from the waiting queue this step


class StepOutputs(msgspec.Struct, frozen=True, tag="outputs"):
    """Everything one engine step produced, for every request, in one message. Outputs of
    aborts (not a step) come without `step`."""

    outputs: list[RequestOutput]
    step: StepInfo | None = None


class RequestRejected(msgspec.Struct, frozen=True, tag="rejected"):
    req_id: str
    code: str  # e.g. "context_length_exceeded", "invalid_request"
    message: str


class StatsReply(msgspec.Struct, frozen=True, tag="stats"):
    query_id: int
    stats: EngineStatsMessage


class EngineFailed(msgspec.Struct, frozen=True, tag="failed"):
    """The engine hit an error it cannot recover from and is exiting."""

    message: str


EngineOutput = Union[EngineReady, StartupFailed, StepOutputs, RequestRejected, StatsReply,
                     EngineFailed]


def input_codec() -> tuple[msgspec.msgpack.Encoder, msgspec.msgpack.Decoder]:
    return msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(EngineInput)


def output_codec() -> tuple[msgspec.msgpack.Encoder, msgspec.msgpack.Decoder]:
    return msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(EngineOutput)


def encode_process_args(args: EngineProcessArgs) -> str:
    return msgspec.json.encode(args).decode()


def decode_process_args(text: str) -> EngineProcessArgs:
    return msgspec.json.decode(text, type=EngineProcessArgs)
