"""EngineClient: the api process's handle on the engine process (asyncio, zmq.asyncio).

It starts the engine as a child process (or, with --api-server-count, attaches to the one
the serve process started: EngineAttachment), sends it requests and aborts without ever
blocking the event loop, and routes each step's outputs to the stream of the api request that owns
them. One api request (say n=3 choices) is one OutputStream over several engine requests
(output_stream.py: outputs merge there while the request's client lags).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio

from server.config import CacheConfig, KVEventsConfig, ModelConfig, SchedulerConfig
from server.engine.service.info import EngineInfo, EngineStats
from server.engine.service.output_stream import OutputStream
from server.lifetime import wait_for_exit
from server.engine.service.messages import (AbortRequests, AddRequest, EngineFailed,
                                    EngineProcessArgs, EngineReady,
                                    RequestRejected, Shutdown, StartupFailed, StatsQuery,
                                    StatsReply, StepInfo, StepOutputs, encode_process_args,
                                    input_codec, output_codec)
from server.scheduler.output import RequestOutput
from server.scheduler.request import SamplingParams

logger = logging.getLogger("inflightd.client")

SHUTDOWN_GRACE_S = 5.0
ENGINE_MODULE = "server.engine.service.process"


class EngineStartupError(RuntimeError):
    """The engine process could not start; the message says why."""


class EngineDeadError(RuntimeError):
    """The engine process is gone (or failed); nothing more will come from it."""


class EngineRequestRejected(ValueError):
    """The engine refused a request; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class EngineAttachment:
    """An engine process another process started and several api processes share
    (--api-server-count, server/api/scale_out.py): this api process's own socket addresses,
    its index among them (its outputs come back on its own socket), and the engine's pid,
    watched to learn of its death."""

    input_address: str
    output_address: str
    client_index: int
    engine_pid: int


@dataclass(frozen=True)
class EngineRequest:
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    priority: int = 0


class EngineClient:
    def __init__(self, *, model_config: ModelConfig, cache_config: CacheConfig,
                 scheduler_config: SchedulerConfig, log_level: str = "info",
                 log_format: str = "text",
                 on_step: Callable[[StepInfo], None] | None = None,
                 kv_events_config: KVEventsConfig | None = None,
                 attachment: EngineAttachment | None = None) -> None:
        """attachment: use that running engine instead of starting one."""
        self._attachment = attachment
        self._client_index = 0 if attachment is None else attachment.client_index
        self._model_config = model_config
        self._kv_events_config = kv_events_config
        self._cache_config = cache_config
        self._scheduler_config = scheduler_config
        self._log_level = log_level
        self._log_format = log_format
        self._on_step = on_step  # told of every engine step (metrics)
        self.latest_stats: EngineStats | None = None  # the last the engine sent
        self._admitted: set[str] = set()  # open req_ids the scheduler has taken up
        self._refusing: str | None = None  # why new requests are refused (shutting down)
        self._failed = asyncio.Event()
        self._input_encoder, _ = input_codec()
        _, self._output_decoder = output_codec()
        self._streams: dict[str, OutputStream] = {}
        self._stats_waiters: dict[int, asyncio.Future[EngineStats]] = {}
        self._query_ids = itertools.count()
        self._failure: str | None = None
        self._stopping = False
        self._last_message_at = time.monotonic()
        self._info: EngineInfo | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task] = []
        self._ready: asyncio.Future[EngineInfo] | None = None
        self._ipc_dir: Path | None = None
        self._sync_context: zmq.Context | None = None
        self._async_context: zmq.asyncio.Context | None = None
        self._input: zmq.Socket | None = None  # PUSH, api -> engine (bound in start)
        self._output: zmq.asyncio.Socket | None = None  # PULL, engine -> api

    # ---- lifecycle ----

    async def start(self, *, timeout_s: float = 1800.0) -> EngineInfo:
        """Start the engine process (or attach to the shared one) and wait until it has
        built its core."""
        if self._attachment is None:
            self._ipc_dir = Path(tempfile.mkdtemp(prefix="inflightd-"))
            input_address = f"ipc://{self._ipc_dir / 'input'}"
            output_address = f"ipc://{self._ipc_dir / 'output'}"
        else:
            input_address = self._attachment.input_address
            output_address = self._attachment.output_address
        self._sync_context = zmq.Context()
        self._input = self._sync_context.socket(zmq.PUSH)
        self._input.setsockopt(zmq.SNDHWM, 0)  # sends never block the event loop
        self._input.setsockopt(zmq.LINGER, 0)
        self._input.bind(input_address)
        self._async_context = zmq.asyncio.Context()
        self._output = self._async_context.socket(zmq.PULL)
        self._output.setsockopt(zmq.LINGER, 0)
        self._output.bind(output_address)
        if self._attachment is None:
            args = EngineProcessArgs(
                model_config=self._model_config, cache_config=self._cache_config,
                scheduler_config=self._scheduler_config, input_addresses=[input_address],
                output_addresses=[output_address], log_level=self._log_level,
                log_format=self._log_format, kv_events_config=self._kv_events_config,
                api_pid=os.getpid())
            # The engine reads end of file on this stdin pipe when this process dies.
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", ENGINE_MODULE, encode_process_args(args),
                stdin=asyncio.subprocess.PIPE)
            watch = self._watch_process()
        else:
            watch = self._watch_attached(self._attachment.engine_pid)
        self._ready = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.create_task(self._read_outputs(), name="engine-outputs"),
                       asyncio.create_task(watch, name="engine-watch")]
        try:
            self._info = await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except asyncio.TimeoutError:
            await self.shutdown()
            raise EngineStartupError(f"the engine did not start within {timeout_s:.0f} s")
        except EngineStartupError:
            await self.shutdown()
            raise
        return self._info

    async def shutdown(self) -> None:
        self._stopping = True
        linger_ms = 0
        if self._attachment is not None and self.is_alive and self._streams:
            # the shared engine runs on: what this process still holds must not
            self.abort_open_requests(reason="the daemon is shutting down")
            linger_ms = 1000
        if self._process is not None and self._process.returncode is None:
            try:
                self._send(Shutdown())
            except zmq.Again:  # the engine never connected: nobody to tell
                self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), SHUTDOWN_GRACE_S)
            except asyncio.TimeoutError:
                logger.warning("engine did not stop in %.0f s; killing it", SHUTDOWN_GRACE_S)
                self._process.kill()
                await self._process.wait()
        self._fail("the daemon is shutting down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for context in (self._sync_context, self._async_context):
            if context is not None:
                context.destroy(linger=linger_ms)
        self._sync_context = self._async_context = None
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None

    # ---- state ----

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineDeadError("the engine has not started")
        return self._info

    @property
    def started_info(self) -> EngineInfo | None:
        """The engine's info once it has started (kept after it stops), else None."""
        return self._info

    @property
    def is_alive(self) -> bool:
        if self._failure is not None or self._info is None:
            return False
        # an attached engine's death comes as a failure (_watch_attached)
        return self._attachment is not None or (self._process is not None
                                                and self._process.returncode is None)

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def seconds_since_last_message(self) -> float:
        """How long ago the engine last said anything (a step's outputs count)."""
        return time.monotonic() - self._last_message_at

    @property
    def num_open_requests(self) -> int:
        return len(self._streams)

    @property
    def num_waiting_requests(self) -> int:
        """Open requests the engine has not taken from its waiting queue yet, as far as
        its step messages tell (a preempted request waits again but is not counted)."""
        return len(self._streams) - len(self._admitted)

    async def wait_failed(self) -> str:
        """Wait until the engine dies or fails; returns why."""
        await self._failed.wait()
        return self._failure or "the engine stopped"

    # ---- requests ----

    def add_requests(self, stream: OutputStream, requests: Sequence[EngineRequest]) -> None:
        """Send requests whose outputs go to `stream`. Raises EngineDeadError."""
        if not self.is_alive:
            raise EngineDeadError(self._failure or "the engine is not running")
        if self._refusing is not None:
            raise EngineDeadError(self._refusing)
        now = time.time()
        for request in requests:
            self._streams[request.req_id] = stream
            stream.unfinished_req_ids.add(request.req_id)
            self._send(AddRequest(req_id=request.req_id,
                                  prompt_token_ids=request.prompt_token_ids,
                                  sampling_params=request.sampling_params, arrival_time=now,
                                  priority=request.priority, client_index=self._client_index))

    def abort(self, req_ids: Iterable[str]) -> None:
        """Abort engine requests; their later outputs, if any, are dropped."""
        req_ids = [r for r in req_ids if self._streams.pop(r, None) is not None]
        self._admitted.difference_update(req_ids)
        if req_ids and self.is_alive:
            self._send(AbortRequests(req_ids=req_ids))

    def abort_open_requests(self, *, reason: str) -> int:
        """Abort every open request so that each ends with finish_reason "abort" (the engine's
        final outputs still reach their streams), and refuse new ones from now on with
        `reason`. Returns how many were aborted."""
        self._refusing = reason
        req_ids = list(self._streams)
        if req_ids and self.is_alive:
            self._send(AbortRequests(req_ids=req_ids))
        return len(req_ids)

    def close_stream(self, stream: OutputStream) -> None:
        """The api request is over (done, failed or its client left): abort what still runs."""
        self.abort(list(stream.unfinished_req_ids))
        stream.unfinished_req_ids.clear()

    async def stats(self, *, timeout_s: float = 5.0) -> EngineStats:
        """Ask the engine for its figures; it answers between two steps."""
        if not self.is_alive:
            raise EngineDeadError(self._failure or "the engine is not running")
        query_id = next(self._query_ids)
        waiter = asyncio.get_running_loop().create_future()
        self._stats_waiters[query_id] = waiter
        self._send(StatsQuery(query_id=query_id, client_index=self._client_index))
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._stats_waiters.pop(query_id, None)

    # ---- internals ----

    def _send(self, message) -> None:
        self._input.send(self._input_encoder.encode(message), zmq.NOBLOCK, copy=False)

    async def _read_outputs(self) -> None:
        while True:
            raw = await self._output.recv(copy=False)
            message = self._output_decoder.decode(raw.buffer)
            self._last_message_at = time.monotonic()
            if isinstance(message, StepOutputs):
                if message.step is not None:
                    self._note_step(message.step)
                self._dispatch(message.outputs)
            elif isinstance(message, StatsReply):
                self.latest_stats = message.stats
                waiter = self._stats_waiters.get(message.query_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message.stats)
            elif isinstance(message, RequestRejected):
                stream = self._streams.pop(message.req_id, None)
                self._admitted.discard(message.req_id)
                if stream is not None:
                    stream.unfinished_req_ids.discard(message.req_id)
                    stream._fail(EngineRequestRejected(message.code, message.message))
            elif isinstance(message, EngineReady):
                if not self._ready.done():
                    self._ready.set_result(message.info)
            elif isinstance(message, StartupFailed):
                self._fail(message.message, startup=True)
            elif isinstance(message, EngineFailed):
                self._fail(f"the engine failed: {message.message}")

    def _note_step(self, step: StepInfo) -> None:
        for req_id in step.admitted_req_ids:
            stream = self._streams.get(req_id)
            if stream is not None:
                self._admitted.add(req_id)
                stream.admitted_at.setdefault(req_id, step.started_at)
        if self._on_step is not None:
            self._on_step(step)

    def _dispatch(self, outputs: Sequence[RequestOutput]) -> None:
        """Each stream gets its requests' outputs of the step in one put (one wake-up)."""
        batches: dict[int, tuple[OutputStream, list[RequestOutput]]] = {}
        for output in outputs:
            stream = self._streams.get(output.req_id)
            if stream is None:
                continue  # aborted by the api; the engine had already stepped it
            if output.finished:
                del self._streams[output.req_id]
                self._admitted.discard(output.req_id)
                stream.unfinished_req_ids.discard(output.req_id)
            batches.setdefault(id(stream), (stream, []))[1].append(output)
        for stream, batch in batches.values():
            stream._put(batch)

    async def _watch_process(self) -> None:
        returncode = await self._process.wait()
        if self._failure is None and not self._stopping:
            logger.error("the engine process exited unexpectedly (status %s)", returncode)
        self._fail(f"the engine process exited (status {returncode})", startup=True)

    async def _watch_attached(self, engine_pid: int) -> None:
        await wait_for_exit(engine_pid)
        if self._failure is None and not self._stopping:
            logger.error("the shared engine process (%d) exited unexpectedly", engine_pid)
        self._fail("the engine process exited", startup=True)

    def _fail(self, message: str, *, startup: bool = False) -> None:
        """Mark the engine dead and end every open request with EngineDeadError."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineStartupError(message) if startup
                                      else EngineDeadError(message))
        if self._failure is not None:
            return
        self._failure = message
        self._failed.set()
        streams = {id(s): s for s in self._streams.values()}
        self._streams.clear()
        self._admitted.clear()
        for stream in streams.values():
            stream.unfinished_req_ids.clear()
            stream._fail(EngineDeadError(message))
        for waiter in self._stats_waiters.values():
            if not waiter.done():
                waiter.set_exception(EngineDeadError(message))
