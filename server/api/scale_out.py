"""--api-server-count N: N api processes serve one port and share one engine process.

    inflightd serve (this process: it only starts, watches and stops the others)
      ├── engine process        python -m server.engine.service.process: one PULL, N PUSH
      ├── api process 0         python -m server.api.worker: HTTP (and gRPC, if asked)
      ├── ...
      └── api process N-1       python -m server.api.worker: HTTP

- One port: every api process binds HOST:PORT with SO_REUSEPORT and listens once its app has
  started; the kernel spreads new connections over the listening ones. This process binds
  the port first (without listening), so a port in use fails at once, and --port 0 picks
  one port for all.
- Routing: api process i binds its own ipc socket pair and its requests carry client index
  i (messages.py), so the engine sends their outputs, rejections and stats back to it.
- Coherent figures: each api process observes its own requests in prometheus_client's
  multiprocess mode (one directory for all, metrics.py) and /metrics from any of them sums
  them all; /health, /ready and the engine gauges ask the one engine.
- Lifetime: SIGTERM or SIGINT here is passed on as SIGTERM to every api process, which
  drains as a single daemon does (a second signal stops them at once); once they have all
  exited the engine gets SIGTERM. Every child is bound to this process by Linux's
  parent-death signal (server/lifetime.py), so killing it stops them too. An api process
  that dies unexpectedly takes the daemon down (the others drain, exit status 1), as a
  dead engine does.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import msgspec

from server.api.http_server import shared_port_socket
from server.api.settings import ServeConfig
from server.engine.service.client import ENGINE_MODULE, SHUTDOWN_GRACE_S, EngineAttachment
from server.engine.service.messages import EngineProcessArgs, encode_process_args

logger = logging.getLogger("inflightd.api")

WORKER_MODULE = "server.api.worker"
POLL_S = 0.1  # how often the children are looked at (signals wake the sleep anyway)


class ApiWorkerArgs(msgspec.Struct, frozen=True):
    """What api process `index` is started with (on its stdin: it holds the API keys)."""

    config: ServeConfig
    index: int
    attachment: EngineAttachment
    metrics_dir: str
    supervisor_pid: int


def run_api_servers(config: ServeConfig) -> int:
    """Start the engine and the api processes, serve until signalled; the exit status."""
    api = config.api
    try:
        reservation = shared_port_socket(api.host, api.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", api.host, api.port, exc)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="inflightd-"))
    try:
        port = reservation.getsockname()[1]
        config = replace(config, api=replace(api, port=port))
        return Supervisor(config, run_dir).run()
    finally:
        reservation.close()
        shutil.rmtree(run_dir, ignore_errors=True)


class Supervisor:
    def __init__(self, config: ServeConfig, run_dir: Path) -> None:
        self._config = config
        self._run_dir = run_dir
        self._count = config.api.api_server_count
        self._engine: subprocess.Popen | None = None
        self._workers: list[subprocess.Popen] = []
        self._stopping = False  # a signal came, or a child died: the api processes drain
        self._failed = False  # a child died unexpectedly

    def _address(self, kind: str, index: int) -> str:
        return f"ipc://{self._run_dir / f'{kind}-{index}'}"

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start_engine()
            metrics_dir = self._run_dir / "metrics"
            metrics_dir.mkdir()
            for index in range(self._count):
                self._workers.append(self._start_worker(index, metrics_dir))
            logger.info("%d api processes serve port %d, sharing engine process %d",
                        self._count, self._config.api.port, self._engine.pid)
            self._watch()
        finally:
            self._stop_engine()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        statuses = [worker.returncode for worker in self._workers]
        worst = max((s for s in statuses if s is not None), default=1)
        return max(worst, 1) if self._failed else worst

    def _start_engine(self) -> None:
        config = self._config
        args = EngineProcessArgs(
            model_config=config.model, cache_config=config.cache,
            scheduler_config=config.scheduler,
            input_addresses=[self._address("input", i) for i in range(self._count)],
            output_addresses=[self._address("output", i) for i in range(self._count)],
            log_level=config.api.log_level, log_format=config.api.log_format,
            kv_events_config=config.kv_events, api_pid=os.getpid())
        # Its own session: a terminal's Ctrl-C reaches this process alone, which decides
        # the order things stop in. Its stdin pipe reaches end of file if this one dies.
        self._engine = subprocess.Popen(
            [sys.executable, "-m", ENGINE_MODULE, encode_process_args(args)],
            stdin=subprocess.PIPE, start_new_session=True)

    def _start_worker(self, index: int, metrics_dir: Path) -> subprocess.Popen:
        api = self._config.api
        # gRPC has one port: api process 0 serves it
        own_api = api if index == 0 else replace(api, grpc_port=None)
        args = ApiWorkerArgs(
            config=replace(self._config, api=own_api), index=index,
            attachment=EngineAttachment(
                input_address=self._address("input", index),
                output_address=self._address("output", index), client_index=index,
                engine_pid=self._engine.pid),
            metrics_dir=str(metrics_dir), supervisor_pid=os.getpid())
        # prometheus_client reads the directory when it is first imported
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        worker = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                  env=env, start_new_session=True)
        worker.stdin.write(msgspec.json.encode(args) + b"\n")
        worker.stdin.flush()  # left open: the worker reads one line
        return worker

    def _on_signal(self, sig: int, frame) -> None:
        logger.info("received %s: the api processes drain", signal.Signals(sig).name)
        self._stopping = True
        self._signal_workers()

    def _signal_workers(self) -> None:
        for worker in self._workers:
            if worker.poll() is None:
                try:
                    os.kill(worker.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _watch(self) -> None:
        """Until every api process has exited; one exiting on its own (or the engine)
        stops the rest."""
        engine_reported = False
        while any(worker.poll() is None for worker in self._workers):
            time.sleep(POLL_S)
            for index, worker in enumerate(self._workers):
                if worker.returncode is not None and not self._stopping:
                    logger.error("api process %d exited (status %d); stopping the daemon",
                                 index, worker.returncode)
                    self._failed = self._stopping = True
                    self._signal_workers()
            if self._engine.poll() is not None and not engine_reported:
                engine_reported = True  # the api processes see it and exit with status 1
                if not self._stopping:
                    self._failed = True

    def _stop_engine(self) -> None:
        engine = self._engine
        if engine is None or engine.poll() is not None:
            return
        engine.terminate()
        try:
            engine.wait(SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("engine did not stop in %.0f s; killing it", SHUTDOWN_GRACE_S)
            engine.kill()
            engine.wait()
