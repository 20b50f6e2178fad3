"""HTTP/1.1 over raw sockets, for what a well-behaved client library will not send: bodies
that trickle in or stall, oversized headers, garbage request lines."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, *, timeout_s: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def request_head(path: str, *, content_length: int | None, extra: str = "") -> bytes:
    length = "" if content_length is None else f"Content-Length: {content_length}\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{length}{extra}\r\n").encode()


def recv_or_eof(sock: socket.socket) -> bytes:
    """The next bytes; b"" once the server closed (a reset too: a server that closes with
    unread request bytes in its buffer resets the connection, after its answer)."""
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def read_response(sock: socket.socket) -> RawResponse:
    """Read one response (with Content-Length, as the error answers have) or until the
    server closes the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = recv_or_eof(sock)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"]) if "content-length" in headers else None
    while length is None or len(body) < length:
        chunk = recv_or_eof(sock)
        if not chunk:
            break
        body += chunk
    return RawResponse(status=status, headers=headers, body=body)


def exchange(port: int, data: bytes, *, timeout_s: float = 30.0) -> RawResponse:
    with connect(port, timeout_s=timeout_s) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking all of it: read the answer
        return read_response(sock)


def trickle(sock: socket.socket, payload: bytes, *, num_pieces: int, interval_s: float) -> None:
    """Send `payload` in `num_pieces` pieces, `interval_s` apart."""
    size = max(1, -(-len(payload) // num_pieces))
    for start in range(0, len(payload), size):
        sock.sendall(payload[start:start + size])
        time.sleep(interval_s)
