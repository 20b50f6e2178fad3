"""The engine process: builds an EngineCore, then loops.

    while True:
        take every message waiting on the input socket (never blocking while there is work)
        if there is work: step once, send every request's output as one message
        else: sleep on the input socket (and on the parent pipe) until something arrives

It never waits on a client: replies go out on PUSH sockets with no high-water mark, and a
slow reader only makes the api process's queue longer. With several api processes
(--api-server-count) each has its own output socket: the loop remembers which one sent each
request (AddRequest.client_index) and sends its outputs there. It exits on a Shutdown message, on
SIGTERM, or when the api process dies: the kernel's parent-death signal (SIGHUP,
server/lifetime.py; it also cuts a start-up short), or its stdin pipe reaching end of file
where that signal is missing.

With --kv-events-endpoint, each step's prefix-cache changes go out as vLLM KV-cache events
(kv_events.py).

Run as `python -m server.engine.service.process '<EngineProcessArgs as JSON>'` by EngineClient.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import stat
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import msgspec
import zmq

from server.config import CacheConfig, ModelConfig
from server.engine.service.energy import EnergyMeter, EnergyMeterUnavailable, open_energy_meter
from server.engine.service.kv_events import KVEventPublisher
from server.lifetime import ParentDied, ParentWatch
from server.engine.service.messages import (AbortRequests, AddRequest, EngineFailed, EngineProcessArgs,
                                    EngineReady, Shutdown, StartupFailed, StatsQuery,
                                    StatsReply, StepInfo, StepOutputs, RequestRejected,
                                    decode_process_args, input_codec, output_codec)
from server.logging_setup import configure_logging

logger = logging.getLogger("inflightd.engine")

IDLE_POLL_MS = 500  # how often an idle engine checks that its parent is still there
CPU_DEFAULT_KV_CACHE_TOKENS = 32768  # modest, so a CPU daemon starts in seconds


def with_default_kv_size(model_config: ModelConfig, cache_config: CacheConfig) -> CacheConfig:
    """On CPU, with no size given, a fixed modest KV cache instead of a share of all RAM."""
    sized = (cache_config.num_blocks, cache_config.kv_cache_tokens, cache_config.memory_fraction)
    if any(value is not None for value in sized):
        return cache_config
    device = model_config.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        return cache_config
    return replace(cache_config, kv_cache_tokens=CPU_DEFAULT_KV_CACHE_TOKENS)


class EngineLoop:
    """Owns the sockets and the core once the core is built."""

    def __init__(self, core, pull: zmq.Socket, pushes: list[zmq.Socket], *,
                 energy_meter: EnergyMeter | None = None,
                 kv_events: KVEventPublisher | None = None,
                 api_watch: ParentWatch | None = None) -> None:
        self._core = core
        self._pull = pull
        self._pushes = pushes  # one per api process, by client index
        self._owners: dict[str, int] = {}  # req_id -> the client index that added it
        self._energy_meter = energy_meter
        self._kv_events = kv_events
        self._api_watch = api_watch  # the parent-death signal came
        self._encoder, _ = output_codec()
        _, self._decoder = input_codec()
        self._parent_pid = os.getppid()
        self._parent_pipe = 0 if stat.S_ISFIFO(os.fstat(0).st_mode) else None
        self.orphaned = False  # the api process died without telling us to stop

    def send(self, message, client: int = 0) -> None:
        self._pushes[client].send(self._encoder.encode(message), copy=False)

    def send_all(self, message) -> None:
        for client in range(len(self._pushes)):
            self.send(message, client)

    def _send_outputs(self, outputs, step: StepInfo | None = None) -> None:
        """Each api process gets its own requests' outputs (finished ones forgotten) and
        admissions; client 0 gets the step's figures even without outputs of its own."""
        owners = self._owners
        admitted: dict[int, list[str]] = {}
        for req_id in step.admitted_req_ids if step is not None else ():
            admitted.setdefault(owners.get(req_id, 0), []).append(req_id)
        by_client: dict[int, list] = {}
        for output in outputs:
            client = owners.pop(output.req_id, 0) if output.finished else owners.get(
                output.req_id, 0)
            by_client.setdefault(client, []).append(output)
        if step is None:
            for client, mine in by_client.items():
                self.send(StepOutputs(outputs=mine), client)
            return
        for client in range(len(self._pushes)):
            mine, theirs = by_client.get(client, []), admitted.get(client, [])
            if client == 0:
                own_step = msgspec.structs.replace(step, admitted_req_ids=theirs)
            elif mine or theirs:
                own_step = StepInfo(started_at=step.started_at, num_batched_tokens=0,
                                    admitted_req_ids=theirs)
            else:
                continue
            self.send(StepOutputs(outputs=mine, step=own_step), client)

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        if self._parent_pipe is not None:
            poller.register(self._parent_pipe, zmq.POLLIN)
        while True:
            busy = self._core.has_unfinished()
            events = dict(poller.poll(0 if busy else IDLE_POLL_MS))
            if self._parent_gone(events):
                logger.info("the api process is gone; engine exiting")
                self.orphaned = True
                return 0
            if self._pull in events and not self._drain_inputs():
                logger.info("engine shutting down")
                return 0
            if self._core.has_unfinished():
                self._step()

    def _step(self) -> None:
        """One step; its outputs and figures go out as one message (a chunked prefill step
        has no outputs yet, but its tokens and admissions still count for metrics)."""
        outputs = self._core.step()
        if self._kv_events is not None:
            self._kv_events.publish(self._core.take_kv_events())
        for rejected in self._core.take_rejections():
            self.send(RequestRejected(req_id=rejected.req_id, code=rejected.code,
                                      message=rejected.error),
                      self._owners.pop(rejected.req_id, 0))
        summary = self._core.last_step
        if not outputs and (summary is None or (summary.num_batched_tokens == 0
                                                and not summary.grammar_compiles)):
            return
        step = None if summary is None else StepInfo(
            started_at=summary.started_at, num_batched_tokens=summary.num_batched_tokens,
            admitted_req_ids=list(summary.admitted_req_ids),
            grammar_compile_s=[c.seconds for c in summary.grammar_compiles])
        self._send_outputs(outputs, step)

    def _parent_gone(self, events: dict) -> bool:
        if self._api_watch is not None and self._api_watch.gone:
            return True
        if self._parent_pipe is not None and self._parent_pipe in events:
            if not os.read(self._parent_pipe, 4096):
                return True  # end of file: the write end closed with the api process
        return os.getppid() != self._parent_pid

    def _drain_inputs(self) -> bool:
        """Handle every waiting message; False once told to shut down."""
        while True:
            try:
                raw = self._pull.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            message = self._decoder.decode(raw.buffer)
            if isinstance(message, AddRequest):
                self._add(message)
            elif isinstance(message, AbortRequests):
                aborted = self._core.abort(message.req_ids)
                if aborted:
                    self._send_outputs(aborted)
            elif isinstance(message, StatsQuery):
                self.send(StatsReply(query_id=message.query_id, stats=self._stats()),
                          message.client_index)
            elif isinstance(message, Shutdown):
                return False

    def _stats(self):
        stats = self._core.stats()
        if self._energy_meter is not None:
            try:
                stats = replace(stats, energy_joules=self._energy_meter.joules_since_start())
            except EnergyMeterUnavailable as exc:  # the metric goes away; serving goes on
                logger.warning("GPU energy counter stopped working: %s", exc)
                self._energy_meter = None
        return stats

    def _add(self, message: AddRequest) -> None:
        client = message.client_index
        if not 0 <= client < len(self._pushes):
            logger.error("request %s names api process %d of %d; dropped", message.req_id,
                         client, len(self._pushes))
            return
        try:
            self._core.add_request(message.req_id, message.prompt_token_ids,
                                   message.sampling_params, arrival_time=message.arrival_time,
                                   priority=message.priority)
        except ValueError as exc:  # RequestRejectedError carries a code; others are invalid
            code = getattr(exc, "code", None) or "invalid_request"
            self.send(RequestRejected(req_id=message.req_id, code=code, message=str(exc)),
                      client)
            return
        self._owners[message.req_id] = client


def build_core(args: EngineProcessArgs):
    from server.engine.core import EngineCore  # torch and the model: only in this process

    _leave_a_core_for_the_api(args.model_config)
    model_config = _with_engine_dir(args.model_config, args.scheduler_config)
    core = EngineCore(model_config=model_config,
                      cache_config=with_default_kv_size(model_config, args.cache_config),
                      scheduler_config=args.scheduler_config,
                      record_kv_events=args.kv_events_config is not None)
    # What start-up made (the model, kernels, tokenizer, torch's modules) lives as long as
    # this process: frozen, the collector never walks it again, so a full collection no
    # longer stops the loop for 100 ms and more while the GPU waits (bench/host_phases.py).
    gc.collect()
    gc.freeze()
    return core


def _with_engine_dir(model_config: ModelConfig, scheduler_config) -> ModelConfig:
    """On a GPU, serve the model's engine directory: built into the cache on first use
    (weights in the engine dtype, cubins, tuned kernel choices), loaded as is after."""
    import torch

    if model_config.device == "cpu" or not torch.cuda.is_available():
        return model_config
    from server.engine.loading.build import ensure_engine_dir

    engine_dir = ensure_engine_dir(
        model_config.model, dtype=model_config.dtype,
        max_batch_size=scheduler_config.max_num_seqs,
        max_num_tokens=scheduler_config.max_num_batched_tokens,
        max_model_len=model_config.max_model_len)
    return replace(model_config, model=str(engine_dir))


def _leave_a_core_for_the_api(model_config: ModelConfig) -> None:
    """On CPU, torch's worker threads spin while they wait; competing with the api process
    for every core makes each step many times slower, so the engine keeps one core free."""
    import torch

    if os.environ.get("OMP_NUM_THREADS") or model_config.device == "cuda":
        return
    if model_config.device == "auto" and torch.cuda.is_available():
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


def _remove_socket_files(args: EngineProcessArgs) -> None:
    """An api process that died cannot remove its ipc sockets; the engine does it."""
    for address in (*args.input_addresses, *args.output_addresses):
        path = Path(address.removeprefix("ipc://"))
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # only if nothing else is left in it
        except OSError:
            pass


def serve(args: EngineProcessArgs, api_watch: ParentWatch | None = None) -> int:
    """Connect, build the core, announce it, loop. Returns the exit status."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    for address in args.input_addresses:  # fair-queued between the api processes
        pull.connect(address)
    pushes = []
    for address in args.output_addresses:
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 0)  # never block on a slow api process
        push.connect(address)
        pushes.append(push)
    encoder, _ = output_codec()

    def tell_every_api(message) -> None:
        for push in pushes:
            push.send(encoder.encode(message))

    kv_events = loop = core = None
    try:
        try:
            if args.kv_events_config is not None:  # a bad address fails before the model loads
                kv_events = KVEventPublisher(args.kv_events_config,
                                             block_size=args.cache_config.block_size)
            core = build_core(args)
        except Exception as exc:  # reported to the api, which exits with the message
            logger.debug("engine startup failed", exc_info=True)
            tell_every_api(StartupFailed(message=f"{type(exc).__name__}: {exc}"))
            return 1
        core.prepare_grammars()  # the grammar compiler's tokenizer loads meanwhile
        energy_meter = open_energy_meter(core.info.device)
        tell_every_api(EngineReady(info=core.info))
        loop = EngineLoop(core, pull, pushes, energy_meter=energy_meter, kv_events=kv_events,
                          api_watch=api_watch)
        if api_watch is not None:
            api_watch.interrupt = False  # the loop looks at it now, and exits cleanly
        try:
            return loop.run()
        except Exception as exc:
            logger.error("engine failed:\n%s", traceback.format_exc())
            loop.send_all(EngineFailed(message=f"{type(exc).__name__}: {exc}"))
            return 1
    except ParentDied:  # during start-up
        logger.info("the api process is gone; engine exiting")
        return 0
    finally:
        if core is not None:
            core.close()  # the tensor-parallel workers, if any
        if kv_events is not None:
            kv_events.close()
        pull.close(linger=0)
        for push in pushes:
            push.close(linger=1000)  # let the last message (a failure, say) reach the api
        context.term()
        if (loop is not None and loop.orphaned) or (api_watch is not None and api_watch.gone):
            _remove_socket_files(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = decode_process_args(argv[0])
    configure_logging(level=args.log_level, log_format=args.log_format)
    # Ctrl-C reaches the whole process group; the api process decides when the engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    api_watch = None
    if args.api_pid is not None:
        # told the moment the api process dies, also while the model is still loading (the
        # stdin pipe is only read once the loop runs)
        api_watch = ParentWatch(parent_pid=args.api_pid)
        api_watch.start()
    return serve(args, api_watch)


if __name__ == "__main__":
    sys.exit(main())
