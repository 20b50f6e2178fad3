"""Which paths the shared middleware treats as Triton / KServe v2: their generation routes
pass admission (queue limit, in-flight count), their probes stay open without a key and
while draining, and their refusals come in KServe's {"error": "..."} shape."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.api.admission import OPEN_WHILE_DRAINING, is_generation_path, send_error
from server.api.auth import PROBE_PATHS


@pytest.mark.parametrize("path", ["/v2/models/ensemble/generate",
                                  "/v2/models/ensemble/generate_stream",
                                  "/v2/models/ensemble/infer",
                                  "/v2/models/ensemble/versions/1/infer",
                                  "/v1/completions"])
def test_generation_routes_of_both_apis_pass_admission(path):
    assert is_generation_path(path)


@pytest.mark.parametrize("path", ["/v2/models/ensemble", "/v2/models/ensemble/config",
                                  "/v2/health/ready", "/v1/models"])
def test_other_routes_do_not(path):
    assert not is_generation_path(path)


def test_v2_probes_are_open_like_health_and_ready():
    assert {"/v2/health/live", "/v2/health/ready"} <= PROBE_PATHS & OPEN_WHILE_DRAINING


def _refusal(path: str) -> tuple[int, dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "method": "POST", "headers": []}
    asyncio.run(send_error(scope, receive, send, status_code=429, message="too many",
                           type="rate_limit_error", code="rate_limit_exceeded"))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_refusals_take_the_shape_of_the_path_protocol():
    assert _refusal("/v2/models/ensemble/infer") == (429, {"error": "too many"})
    status, body = _refusal("/v1/completions")
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
