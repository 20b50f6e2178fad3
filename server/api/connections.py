"""Connection limits uvicorn lacks, as its h11 protocol with two additions:

- a header deadline: a request's headers must arrive whole within `header_timeout_s` of the
  connection opening (or of the previous response ending, on a keep-alive connection), else
  the connection is closed. uvicorn times out only idle keep-alive connections, and only
  until their first byte: a client sending one header line a second held its connection
  (and a file descriptor) for as long as it liked.
- a cap on open connections: past `max_connections`, a new connection is closed as soon as
  it is accepted, before it costs more than that. (uvicorn's limit_concurrency answers 503
  instead, after reading the request, so the connection stays open.)

The idle keep-alive timeout is uvicorn's own (timeout_keep_alive). The request body has its
own deadline in the routes (request_body_timeout_s, a 408).

A connection buffers at most WRITE_BUFFER_HIGH bytes of response in the process (asyncio's
default is 64 KiB) and SEND_BUFFER_BYTES in the kernel before the response's task waits for
the client: for a stream, what waits beyond that merges into one fresher chunk
(server/engine/service/output_stream.py) instead of queueing as thousands of stale ones.
Left to itself Linux grows a socket's send buffer up to tcp_wmem's maximum (4 MiB here):
a client that stopped reading held some 1,500 chunks there before any merged, and 2,048
such clients could pin gigabytes of kernel memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("inflightd.api")

WRITE_BUFFER_HIGH = 16 * 1024  # about 100 chunks of a stream
# The kernel doubles it for its bookkeeping. A bound on a body's throughput too: 128 KiB
# per round trip (2.6 MB/s at 50 ms), far above what a token stream or an answer needs.
SEND_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_connections: int | None  # None: no cap


def limited_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with these limits (a Config's `http=`)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})


class LimitedH11Protocol(H11Protocol):
    limits: ConnectionLimits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.limits.max_connections
        if cap is not None and len(self.connections) >= cap:
            # Not registered, so connection_lost has nothing to undo but the transport.
            self.transport = transport
            self._header_deadline = None
            logger.warning("refused a connection: %d are open (--max-connections)", cap)
            transport.abort()  # closed now, nothing buffered to flush
            return
        super().connection_made(transport)
        _bound_send_buffers(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        finished = self.cycle  # a pipelined request may start inside the call below
        super().on_response_complete()
        if not self.transport.is_closing():
            # the next request's headers are due in time too
            self._arm_header_deadline(waiting_since=finished)

    def _arm_header_deadline(self, *, waiting_since=None) -> None:
        """Close the connection unless a request's headers arrive (a request cycle other
        than `waiting_since` starts) within the timeout."""
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(
            self.limits.header_timeout_s, self._header_deadline_passed, waiting_since)

    def _cancel_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self, waiting_since) -> None:
        self._header_deadline = None
        if self.cycle is not waiting_since or self.transport.is_closing():
            return  # headers arrived: the request is being served
        logger.info("closed a connection whose request headers did not arrive within %g s",
                    self.limits.header_timeout_s)
        self.transport.close()


def _bound_send_buffers(transport: asyncio.Transport) -> None:
    transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
