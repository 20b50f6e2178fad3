"""Malformed and hostile requests: each gets the right 4xx in OpenAI's error shape, quickly,
the daemon stays healthy after each, and repeating them all grows no memory, file
descriptors or asyncio tasks in either process.

Unknown fields are accepted and ignored (as vLLM does, and as OpenAI's SDKs expect of
servers that lack some of OpenAI's newer fields); a chat template sent in the request is
one of them and is never rendered. docs/reliability.md says why."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.api.openai_schema import assert_matches
from tests.reliability.procs import ProcessFigures, poll_until
from tests.reliability.rawhttp import (connect, exchange, read_response, recv_or_eof,
                                       request_head, trickle)

VOCAB_SIZE = 49152  # SmolLM2's
USER = [{"role": "user", "content": "Say hi"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
FAST_S = 2.0  # every refusal below comes back within this (most in milliseconds)
TEN_MB = 10 * 1024 * 1024
BODY_TIMEOUT_S = 3.0
DAEMON_OPTIONS = {"extra_args": ("--request-body-timeout", str(BODY_TIMEOUT_S))}


def nested(depth: int) -> bytes:
    return b'{"prompt": "hi", "user": ' + b"[" * depth + b"]" * depth + b"}"


# (id, path, body: dict sent as JSON or raw bytes, status, param, code)
CASES: list[tuple[str, str, Any, int, str | None, str | None]] = [
    ("malformed_json", COMPLETIONS, b'{"prompt": "hi", "max_tokens": ', 400, None,
     "invalid_json"),
    ("body_not_utf8", COMPLETIONS, b'\xff\xfe{"prompt": "\x80"}', 400, None, "invalid_json"),
    ("body_is_a_json_array", CHAT, b"[1, 2, 3]", 400, None, "invalid_type"),
    ("prompt_as_number", COMPLETIONS, {"prompt": 5}, 400, "prompt", None),
    ("max_tokens_as_string", COMPLETIONS, {"prompt": "hi", "max_tokens": "10"}, 400,
     "max_tokens", "invalid_type"),
    ("messages_as_object", CHAT, {"messages": {"role": "user"}}, 400, "messages", None),
    ("nan_temperature", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], '
                              b'"temperature": NaN}', 400, "temperature", None),
    ("infinite_top_p", COMPLETIONS, b'{"prompt": "hi", "top_p": Infinity}', 400, "top_p", None),
    ("minus_infinity_penalty", COMPLETIONS,
     b'{"prompt": "hi", "presence_penalty": -Infinity}', 400, "presence_penalty", None),
    ("float_overflowing_to_infinity", COMPLETIONS, b'{"prompt": "hi", "temperature": 1e999}',
     400, "temperature", None),
    ("huge_n", CHAT, {"messages": USER, "n": 10**9}, 400, "n", None),
    ("negative_max_tokens", COMPLETIONS, {"prompt": "hi", "max_tokens": -5}, 400,
     "max_tokens", None),
    ("enormous_max_tokens", COMPLETIONS, {"prompt": "hi", "max_tokens": 10**30}, 400,
     "max_tokens", "context_length_exceeded"),
    ("empty_prompt", COMPLETIONS, {"prompt": ""}, 400, "prompt", None),
    ("empty_messages", CHAT, {"messages": []}, 400, "messages", None),
    ("token_id_outside_vocab", COMPLETIONS, {"prompt": [1, VOCAB_SIZE]}, 400, "prompt", None),
    ("token_id_beyond_int64", COMPLETIONS, {"prompt": [2**70]}, 400, "prompt", None),
    ("negative_token_id", COMPLETIONS, {"prompt": [[7, -3]]}, 400, "prompt.0", None),
    ("ten_megabyte_prompt", COMPLETIONS, {"prompt": "a" * TEN_MB}, 413, None,
     "request_too_large"),
    ("three_megabyte_prompt", COMPLETIONS, {"prompt": "hello world " * 250_000}, 400, "prompt",
     "context_length_exceeded"),
    ("thousands_of_stop_strings", COMPLETIONS,
     {"prompt": "hi", "stop": [f"stop{i}" for i in range(5000)]}, 400, "stop", None),
    ("deeply_nested_json", COMPLETIONS, nested(100_000), 400, None, "invalid_json"),
    ("nesting_just_past_the_parser_limit", COMPLETIONS, nested(300), 400, None,
     "invalid_json"),
    ("lone_surrogate_in_prompt", COMPLETIONS, b'{"prompt": "abc\\ud800", "max_tokens": 1}',
     400, None, "invalid_json"),
    ("lone_low_surrogate_in_message", CHAT,
     b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400, None, "invalid_json"),
    ("seed_beyond_int64", COMPLETIONS, {"prompt": "hi", "seed": 2**70, "max_tokens": 1}, 400,
     "seed", None),
    ("priority_beyond_int64", COMPLETIONS, {"prompt": "hi", "priority": -(2**70)}, 400,
     "priority", None),
    ("top_k_beyond_int64", CHAT, {"messages": USER, "top_k": 2**64}, 400, "top_k", None),
    ("ten_thousand_prompts_in_one_request", COMPLETIONS,
     {"prompt": [[1, 2]] * 10_000, "max_tokens": 1}, 400, "prompt", None),
    ("stop_token_outside_vocab", CHAT, {"messages": USER, "stop_token_ids": [10**12]}, 400,
     "stop_token_ids", None),
    ("unknown_role", CHAT, {"messages": [{"role": "root", "content": "hi"}]}, 400,
     "messages.0.role", None),
    ("logit_bias", CHAT, {"messages": USER, "logit_bias": {"50": 101}}, 400, "logit_bias",
     None),
    ("tools", CHAT, {"messages": USER, "tools": [{"type": "function"}]}, 400,
     "tools.0.function", "missing_required_parameter"),
    ("unknown_model", CHAT, {"messages": USER, "model": "../../etc/passwd"}, 404, "model",
     "model_not_found"),
]


def encoded(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def send(http: httpx.Client, path: str, body: bytes) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    return response, time.monotonic() - start


def check_openai_error(response: httpx.Response, status: int, param: str | None,
                       code: str | None) -> dict:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert_matches(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture(autouse=True)
def healthy_after_each(http: httpx.Client):
    yield
    assert http.get("/health", timeout=10).status_code == 200


@pytest.mark.parametrize("name,path,body,status,param,code", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_quick_openai_error(http, name, path, body, status, param, code):
    response, elapsed_s = send(http, path, encoded(body))
    check_openai_error(response, status, param, code)
    assert elapsed_s < FAST_S, f"{name} took {elapsed_s:.2f} s"


def test_unknown_fields_and_a_chat_template_in_the_request_are_ignored(http):
    plain = {"messages": USER, "max_tokens": 6, "temperature": 0}
    # A template that would loop for ever if rendered, and fields no version of the API has.
    extra = {"chat_template": "{% for i in range(10**12) %}x{% endfor %}",
             "chat_template_kwargs": {"add_generation_prompt": False},
             "frobnicate": [1, {"deep": None}], "echo": True,
             "guided_decoding_backend": "outlines"}
    expected = http.post(CHAT, json=plain)
    response, elapsed_s = send(http, CHAT, encoded({**plain, **extra}))
    assert expected.status_code == response.status_code == 200, response.text
    assert elapsed_s < 30
    content = [r.json()["choices"][0]["message"]["content"] for r in (expected, response)]
    assert content[0] == content[1] and content[0]


def test_oversized_headers_are_refused_by_the_http_layer_at_once(daemon):
    """Headers beyond the HTTP parser's buffer never reach the app: uvicorn answers 400
    (plain text, the one answer here not in OpenAI's shape) and closes the connection."""
    one_huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1024 * 1024 + b"\r\n\r\n"
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: v\r\n" % i for i in range(50_000)) + b"\r\n"
    for request in (one_huge, many):
        start = time.monotonic()
        response = exchange(daemon.port, request)
        assert response.status == 400 and response.headers.get("connection") == "close"
        assert time.monotonic() - start < FAST_S


def test_garbage_instead_of_http_is_refused_at_once(daemon):
    response = exchange(daemon.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 50
                                     + b"\r\n\r\n")
    assert response.status == 400


def test_body_trickled_slowly_is_answered_once_complete_and_blocks_no_one(daemon, http):
    payload = b'{"prompt": "hi", "max_tokens": "three"}'
    with connect(daemon.port) as sock:
        sock.sendall(request_head(COMPLETIONS, content_length=len(payload)))
        trickle(sock, payload[:-1], num_pieces=20, interval_s=0.05)  # 1 s, in the limit
        start = time.monotonic()
        assert http.get("/health").status_code == 200  # the event loop is free meanwhile
        assert time.monotonic() - start < 1.0
        trickle(sock, payload[-1:], num_pieces=1, interval_s=0)
        response = read_response(sock)
    assert response.status == 400
    check_openai_error(httpx.Response(400, content=response.body), 400, "max_tokens", None)


def test_body_that_never_finishes_gets_408_and_its_connection_closed(daemon):
    """A slowloris client keeps sending a byte now and then and never finishes: the body
    timeout counts from the start of the body, so the trickle does not extend it."""
    with connect(daemon.port) as sock:
        start = time.monotonic()
        sock.sendall(request_head(CHAT, content_length=10_000) + b'{"messages": ')
        try:
            trickle(sock, b"[" * 20, num_pieces=20, interval_s=0.25)  # 5 s of trickle
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon gave up on it first, as it should
        response = read_response(sock)
        elapsed_s = time.monotonic() - start
        closed = recv_or_eof(sock) == b""
    assert response.status == 408, response
    check_openai_error(httpx.Response(408, content=response.body), 408, None, None)
    assert response.headers.get("connection") == "close" and closed
    assert BODY_TIMEOUT_S <= elapsed_s < BODY_TIMEOUT_S + 3.5


def test_clients_leaving_in_the_middle_of_a_body_leave_nothing_behind(daemon, http, pids):
    api_pid, engine_pid = pids
    baseline_tasks = http.get("/v1/engine/stats").json()["num_api_tasks"]
    baseline = ProcessFigures.read(api_pid=api_pid, engine_pid=engine_pid)
    sockets = [connect(daemon.port) for _ in range(20)]
    for sock in sockets:
        sock.sendall(request_head(COMPLETIONS, content_length=1000) + b'{"prompt": "ha')
    time.sleep(0.5)
    stats = http.get("/v1/engine/stats").json()
    assert stats["num_api_tasks"] > baseline_tasks  # twenty requests wait for their bodies
    for sock in sockets:
        sock.close()
    assert poll_until(lambda: http.get("/v1/engine/stats").json()["num_api_tasks"]
                      == baseline_tasks, timeout_s=10)
    assert poll_until(lambda: ProcessFigures.read(api_pid=api_pid, engine_pid=engine_pid)
                      .api_fds <= baseline.api_fds, timeout_s=10)
    assert "unexpected error" not in daemon.log()  # a client leaving is not a server error


def one_round(http: httpx.Client, bodies: list[tuple[str, bytes]]) -> list[int]:
    return [send(http, path, body)[0].status_code for path, body in bodies]


def test_hostile_rounds_grow_no_memory_fds_or_tasks(daemon, pids):
    api_pid, engine_pid = pids
    bodies = [(path, encoded(body)) for _, path, body, *_ in CASES]
    expected = [status for *_, status, _, _ in CASES]
    with httpx.Client(base_url=daemon.base_url, timeout=60) as http:
        assert one_round(http, bodies) == expected  # warm-up: first-use caches fill here
    before = ProcessFigures.read(api_pid=api_pid, engine_pid=engine_pid)
    tasks_before = httpx.get(f"{daemon.base_url}/v1/engine/stats").json()["num_api_tasks"]
    for _ in range(3):
        with httpx.Client(base_url=daemon.base_url, timeout=60) as http:
            assert one_round(http, bodies) == expected
    after = ProcessFigures.read(api_pid=api_pid, engine_pid=engine_pid)
    tasks_after = httpx.get(f"{daemon.base_url}/v1/engine/stats").json()["num_api_tasks"]
    message = f"before: {before.describe()}; after: {after.describe()}"
    print(f"hostile rounds: {message}")
    # Three rounds send ~45 MB of bodies; a leak of even one body a round would show.
    assert after.api_rss_kib <= before.api_rss_kib * 1.03 + 4096, message
    assert after.engine_rss_kib <= before.engine_rss_kib * 1.01 + 2048, message
    assert tasks_after == tasks_before
    assert poll_until(lambda: ProcessFigures.read(api_pid=api_pid, engine_pid=engine_pid)
                      .api_fds <= before.api_fds, timeout_s=10), message
