"""A client that reads slower than the engine writes gets merged chunks, not a backlog: a raw
socket with a small receive buffer reads one bit of its stream, stops until the engine has
finished the request, then reads the rest. What it gets: fewer chunks than tokens, at least
one carrying many tokens, every chunk still valid against OpenAI's schema, and the same text
and logprob tokens as the answer of a client that keeps up."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.api.daemon import running_daemon
from tests.api.helpers import CHAT_CHUNK, chat_body, parse_sse
from tests.api.openai_schema import COMPLETION_CHUNK, assert_matches

# Enough tokens to fill what the daemon buffers per connection (about 150 KB of chunks)
# several times over while the reader sleeps: dummy:tiny writes about 300 a second.
NUM_TOKENS = 1200


@pytest.fixture(scope="module")
def tiny():
    with running_daemon(model="dummy:tiny", kv_cache_tokens=8192) as daemon:
        yield daemon


def dechunked(raw: bytes) -> bytes:
    """The body of an HTTP/1.1 response sent with Transfer-Encoding: chunked."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = b""
    while True:
        size, _, rest = rest.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            return body
        body += rest[:length]
        rest = rest[length + 2:]


def slow_read(daemon, path: str, body: dict) -> list[dict]:
    """Stream `body` on a connection that reads a little, then nothing until the engine is
    idle again (the request is fully generated), then everything."""
    payload = json.dumps({**body, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow link's small window
    sock.settimeout(120)
    with sock:
        sock.connect(("127.0.0.1", daemon.port))
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(payload)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + payload)
        raw = sock.recv(1024)
        deadline = time.monotonic() + 120
        while daemon.engine_stats()["num_running"] > 0 or not raw:
            assert time.monotonic() < deadline, "the engine never finished the request"
            time.sleep(0.05)
        while chunk := sock.recv(65536):
            raw += chunk
    return parse_sse(dechunked(raw))


def test_a_slow_completions_reader_gets_merged_chunks_with_every_token(tiny):
    body = {"prompt": "Once upon a time", "max_tokens": NUM_TOKENS, "temperature": 0,
            "ignore_eos": True, "logprobs": 2}
    events = slow_read(tiny, "/v1/completions", body)
    for event in events:
        assert_matches(event, COMPLETION_CHUNK)
    kept_up = httpx.post(f"{tiny.base_url}/v1/completions", json=body, timeout=120).json()
    choice = kept_up["choices"][0]
    tokens_per_chunk = [len(e["choices"][0]["logprobs"]["tokens"]) for e in events]
    assert sum(tokens_per_chunk) == NUM_TOKENS
    assert len(events) < NUM_TOKENS / 2 and max(tokens_per_chunk) > 100, tokens_per_chunk
    assert "".join(e["choices"][0]["text"] for e in events) == choice["text"]
    streamed = [t for e in events for t in e["choices"][0]["logprobs"]["tokens"]]
    assert streamed == choice["logprobs"]["tokens"]
    offsets = [o for e in events for o in e["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == choice["logprobs"]["text_offset"]
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == "length"


def test_a_slow_chat_reader_gets_merged_chunks_for_each_choice(tiny):
    body = chat_body("Tell me a long story.", max_tokens=NUM_TOKENS // 2, temperature=0,
                     ignore_eos=True, n=2, logprobs=True)
    events = slow_read(tiny, "/v1/chat/completions", body)
    for event in events:
        assert_matches(event, CHAT_CHUNK)
    kept_up = httpx.post(f"{tiny.base_url}/v1/chat/completions", json=body,
                         timeout=120).json()
    for index in range(2):
        chunks = [c for e in events for c in e["choices"] if c["index"] == index]
        tokens_per_chunk = [len(c["logprobs"]["content"]) for c in chunks[1:]]  # role first
        assert sum(tokens_per_chunk) == NUM_TOKENS // 2
        assert max(tokens_per_chunk) > 50, tokens_per_chunk
        text = "".join(c["delta"].get("content") or "" for c in chunks)
        assert text == kept_up["choices"][index]["message"]["content"]
        assert chunks[-1]["finish_reason"] == "length"
