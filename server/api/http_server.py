"""Runs the app under uvicorn as the daemon does: our h11 protocol with its connection
limits, signals handed to DaemonControl (drain first), and the daemon's exit status. One api
process runs it once, on HOST:PORT or on the listening socket it is given."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from server.api.app import log_listening
from server.api.connections import ConnectionLimits, limited_protocol
from server.api.settings import ServeConfig
from server.api.shutdown import DrainingServer


def run_app(app: FastAPI, config: ServeConfig, *,
            sockets: list[socket.socket] | None = None) -> int:
    """Serve until told to stop; returns the exit status (1 if the app never started)."""
    api = config.api
    # With JSON logs uvicorn's loggers keep no handlers of their own and reach ours.
    log_config = None if api.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    server = DrainingServer(uvicorn.Config(
        app, host=api.host, port=api.port, log_config=log_config,
        log_level=api.log_level, access_log=api.log_level == "debug",
        timeout_graceful_shutdown=5, timeout_keep_alive=api.keep_alive_timeout_s,
        http=limited_protocol(ConnectionLimits(
            header_timeout_s=api.header_timeout_s,
            max_connections=api.max_connections))), control=app.state.control,
        on_listening=lambda: log_listening(app.state.serving))
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass  # a Ctrl-C that arrived before the app started
    # uvicorn returns normally when the lifespan startup fails (engine or tokenizer).
    return app.state.control.exit_status if server.started else 1


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT, not listening yet (uvicorn
    listens once the app has started): several processes bind the same port so, and the
    kernel spreads new connections over those that listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
