"""How the daemon stops: a graceful drain on SIGTERM or Ctrl-C, and a non-zero exit when
the engine process dies, so that a supervisor (Kubernetes, systemd) restarts it.

    SIGTERM ─▶ draining: /ready 503, new requests 503, /health still 200
            ─▶ requests in flight finish (up to --shutdown-timeout)
            ─▶ past it, the rest are aborted: each ends with finish_reason "abort"
            ─▶ uvicorn stops listening, the engine stops, exit status 0
    a second signal skips the wait (uvicorn's own shutdown cuts what is left).

    engine dies ─▶ /health and /ready 503, requests in flight get an error
                ─▶ after engine_failure_exit_delay_s, the same shutdown, exit status 1

uvicorn's own signal handling would stop listening at once (new clients get connection
refused, not 503) and re-raise SIGTERM at exit (status 143); DrainingServer hands the
first signal to DaemonControl instead.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from server.api.admission import AdmissionController
from server.engine.service.client import EngineClient

logger = logging.getLogger("inflightd.api")

ENGINE_FAILURE_EXIT_STATUS = 1
ABORT_GRACE_S = 3.0  # after aborting, time for the final "abort" chunks to reach clients
SHUTTING_DOWN = "the server is shutting down"


class DaemonControl:
    """The daemon's lifecycle, shared by the uvicorn server (signals, exit) and the app
    (drain, engine watch)."""

    def __init__(self, *, admission: AdmissionController, client: EngineClient,
                 shutdown_timeout_s: float, engine_failure_exit_delay_s: float) -> None:
        self._admission = admission
        self._client = client
        self._shutdown_timeout_s = shutdown_timeout_s
        self._engine_failure_exit_delay_s = engine_failure_exit_delay_s
        self._request_exit: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._drain_started = False
        self.exit_status = 0

    def bind_exit(self, request_exit: Callable[[], None]) -> None:
        """How to make the HTTP server stop (set by the server that runs the app)."""
        self._request_exit = request_exit

    @property
    def draining(self) -> bool:
        return self._admission.draining

    # ---- called by the app's lifespan ----

    def serving_started(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self._watch_engine(), name="engine-death"))

    async def serving_stopped(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # ---- called from the signal handler ----

    def on_signal(self, sig: int) -> bool:
        """Start a drain on the first signal once serving; False: the caller should stop
        at once (a second signal, or one before the app has started)."""
        if self._drain_started or self._loop is None or self._loop.is_closed():
            return False
        self._drain_started = True
        self._loop.call_soon_threadsafe(self._start_drain, sig)
        return True

    def _start_drain(self, sig: int) -> None:
        logger.info("received %s", signal.Signals(sig).name)
        self._tasks.append(asyncio.create_task(self.drain(), name="drain"))

    # ---- the two ways out ----

    async def drain(self) -> None:
        admission = self._admission
        admission.start_draining()
        timeout_s = self._shutdown_timeout_s
        logger.info("shutting down: /ready is 503 and new requests are refused; waiting up "
                    "to %g s for %d request(s) in flight", timeout_s, admission.num_in_flight,
                    extra={"fields": {"event": "draining", "timeout_s": timeout_s,
                                      "in_flight": admission.num_in_flight}})
        if not await admission.wait_idle(timeout_s):
            num_aborted = self._client.abort_open_requests(reason=SHUTTING_DOWN)
            logger.warning("shutdown timeout (%g s) reached: aborting %d engine request(s)",
                           timeout_s, num_aborted)
            if not await admission.wait_idle(ABORT_GRACE_S):
                logger.warning("%d request(s) still open; closing their connections",
                               admission.num_in_flight)
        else:
            self._client.abort_open_requests(reason=SHUTTING_DOWN)  # refuse late ones
        self._exit(0)

    async def _watch_engine(self) -> None:
        reason = await self._client.wait_failed()
        self.exit_status = ENGINE_FAILURE_EXIT_STATUS
        delay_s = self._engine_failure_exit_delay_s
        logger.error("the engine is gone (%s); exiting with status %d in %g s so that the "
                     "daemon is restarted", reason, ENGINE_FAILURE_EXIT_STATUS, delay_s,
                     extra={"fields": {"event": "engine_failed", "reason": reason}})
        await asyncio.sleep(delay_s)
        self._exit(ENGINE_FAILURE_EXIT_STATUS)

    def _exit(self, status: int) -> None:
        self.exit_status = max(self.exit_status, status)
        if self._request_exit is not None:
            self._request_exit()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with DaemonControl deciding what a signal does."""

    def __init__(self, config: uvicorn.Config, *, control: DaemonControl,
                 on_listening: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._control = control
        self._on_listening = on_listening
        control.bind_exit(self._stop)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_listening is not None:  # its sockets listen now
            self._on_listening()

    def _stop(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's _captured_signals: it would re-raise them at exit.
        if self._control.on_signal(sig):
            return
        if self.should_exit:
            self.force_exit = True  # a third signal: skip even uvicorn's graceful wait
        self.should_exit = True
