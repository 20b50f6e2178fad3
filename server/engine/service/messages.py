"""The messages between the api process and the engine process, encoded with msgspec
(MessagePack). Never pickle: a socket only ever carries these types.

    api process i                                 engine process
      PUSH  --- AddRequest | AbortRequests | StatsQuery | Shutdown --->  PULL (one for all)
      PULL  <-- EngineReady | StartupFailed | StepOutputs | RequestRejected
                | StatsReply | EngineFailed -------------------------  PUSH i

With --api-server-count N, N api processes share the engine: each binds its own pair of
sockets, and its AddRequest and StatsQuery carry its index (client_index), so the engine
sends a request's outputs, rejection and stats back to the process that holds it.

EngineInfo and EngineStats travel as the engine's own dataclasses (server/engine/service/info.py,
which imports no torch).

Only the engine process's main (process.py) and the api's client import this module: the
engine core and runner do not, so they run where msgspec is absent.
"""

from __future__ import annotations

from typing import Union

import msgspec

from server.config import CacheConfig, KVEventsConfig, ModelConfig, SchedulerConfig
from server.engine.service.info import EngineInfo, EngineStats
from server.scheduler.output import RequestOutput
from server.scheduler.request import SamplingParams


# ---- what the engine process is started with (passed as JSON on its command line) ----

class EngineProcessArgs(msgspec.Struct, frozen=True):
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    # one per api process, by client index: each api process's PUSH binds its input address
    # and its PULL its output address; the engine's PULL connects to every input address
    # and one PUSH per api process to its output address
    input_addresses: list[str]
    output_addresses: list[str]
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (server/logging_setup.py)
    kv_events_config: KVEventsConfig | None = None  # None: no KV-event publishing
    api_pid: int | None = None  # the engine exits when this process (its parent) dies

    def __post_init__(self) -> None:
        if not self.output_addresses or len(self.input_addresses) != len(
                self.output_addresses):
            raise ValueError("the engine needs one input and one output address per api "
                             "process")


# ---- api -> engine ----

class AddRequest(msgspec.Struct, frozen=True, tag="add"):
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    priority: int = 0
    client_index: int = 0  # the api process whose output socket gets its outputs


class AbortRequests(msgspec.Struct, frozen=True, tag="abort"):
    req_ids: list[str]


class StatsQuery(msgspec.Struct, frozen=True, tag="stats"):
    query_id: int
    client_index: int = 0  # the api process to answer


class Shutdown(msgspec.Struct, frozen=True, tag="shutdown"):
    pass


EngineInput = Union[AddRequest, AbortRequests, StatsQuery, Shutdown]


# ---- engine -> api ----

class EngineReady(msgspec.Struct, frozen=True, tag="ready"):
    info: EngineInfo


class StartupFailed(msgspec.Struct, frozen=True, tag="startup_failed"):
    message: str


class StepInfo(msgspec.Struct, frozen=True):
    """The step behind a StepOutputs, for the api's metrics (see core.StepSummary). With
    several api processes, each gets the admissions of its own requests, and only the first
    (client 0) the step's token count and grammar compiles, so that the processes' metrics
    add up to the engine's once."""

    started_at: float  # time.monotonic(): one clock for both processes
    num_batched_tokens: int
    admitted_req_ids: list[str]  # taken from the waiting queue this step
    grammar_compile_s: list[float] = []  # grammars compiled (or failed) since the last step


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
    stats: EngineStats


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
