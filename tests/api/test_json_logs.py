"""--log-format json on a real daemon: every line it writes (ours and uvicorn's) is a JSON
object; start-up lines carry the address, model and KV size; each finished request gets
one line with its id, token counts, TTFT, latency and finish reason."""

from __future__ import annotations

import json
import time

import httpx

from tests.api.daemon import Daemon, running_daemon

KV_CACHE_TOKENS = 2048


def json_lines(daemon: Daemon) -> list[dict]:
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    return entries


def wait_for_event(daemon: Daemon, event: str, *, count: int, timeout_s: float = 10
                   ) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [e for e in json_lines(daemon) if e.get("event") == event]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_json_logs_have_structured_startup_and_one_line_per_request():
    with running_daemon(model="dummy:tiny", kv_cache_tokens=KV_CACHE_TOKENS,
                        log_level="info", extra_args=("--log-format", "json")) as d:
        [listening] = wait_for_event(d, "listening", count=1)
        assert listening["url"] == d.base_url
        assert (listening["host"], listening["port"]) == ("127.0.0.1", d.port)
        assert listening["model"] == "dummy:tiny"
        [kv_cache] = wait_for_event(d, "kv_cache", count=1)
        assert kv_cache["kv_cache_tokens"] == KV_CACHE_TOKENS
        assert kv_cache["block_size"] * kv_cache["num_kv_blocks"] == KV_CACHE_TOKENS

        plain = httpx.post(f"{d.base_url}/v1/completions", timeout=60,
                           json={"prompt": "Hello there", "max_tokens": 5, "ignore_eos": True})
        streamed = httpx.post(f"{d.base_url}/v1/chat/completions", timeout=60,
                              json={"messages": [{"role": "user", "content": "Hi"}],
                                    "max_tokens": 3, "ignore_eos": True, "n": 2,
                                    "stream": True})
        constrained = httpx.post(f"{d.base_url}/v1/completions", timeout=60,
                                 json={"prompt": "Pick one", "max_tokens": 5,
                                       "guided_choice": ["left", "right"]})
        assert plain.status_code == streamed.status_code == constrained.status_code == 200
        stream_id = json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))["id"]

        finished = {e["req_id"]: e for e in wait_for_event(d, "request_finished", count=3)}
        assert finished.keys() == {plain.json()["id"], stream_id, constrained.json()["id"]}
        assert finished[constrained.json()["id"]]["grammar"] == "choice"
        assert finished[plain.json()["id"]]["grammar"] is None
        first = finished[plain.json()["id"]]
        usage = plain.json()["usage"]
        assert first["logger"] == "inflightd.requests"
        assert (first["prompt_tokens"], first["completion_tokens"]) == (
            usage["prompt_tokens"], usage["completion_tokens"])
        assert first["finish_reason"] == "length"
        assert 0 < first["ttft_s"] <= first["latency_s"] < 30
        second = finished[stream_id]
        assert second["completion_tokens"] == 6  # 2 choices x 3
        assert second["finish_reason"] == "length"
        loggers = {e["logger"] for e in json_lines(d)}
        assert {"inflightd.api", "inflightd.requests", "uvicorn.error"} <= loggers


def test_the_listening_line_comes_once_the_socket_accepts_connections():
    """DrainingServer calls on_listening after uvicorn's start-up, its socket listening: an
    api process that logged "listening" earlier (while its app still collected garbage)
    let a second one on the same port take every connection meanwhile."""
    import asyncio
    import socket

    import uvicorn

    from server.api.http_server import shared_port_socket
    from server.api.shutdown import DrainingServer

    class Control:
        def bind_exit(self, request_exit):
            self.request_exit = request_exit

        def on_signal(self, sig):
            return False

    async def app(scope, receive, send):  # a lifespan that starts at once, and nothing else
        while scope["type"] == "lifespan":
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            if message["type"] == "lifespan.shutdown":
                return

    sock = shared_port_socket("127.0.0.1", 0)  # bound, not listening yet
    port, connected = sock.getsockname()[1], []
    control = Control()

    def on_listening():
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            connected.append(port)
        control.request_exit()

    server = DrainingServer(uvicorn.Config(app, lifespan="on", log_config=None),
                            control=control, on_listening=on_listening)
    asyncio.run(server.serve(sockets=[sock]))
    assert connected == [port]
