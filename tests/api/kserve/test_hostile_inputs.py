"""Hostile requests to the /v2 routes and the gRPC port: each gets a 4xx (or a gRPC error)
in KServe v2's shape, and the daemon keeps serving afterwards."""

from __future__ import annotations

import json
import struct

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.api.kserve.helpers import PROMPT, ensemble_arrays, infer_inputs

INFER = "/v2/models/ensemble/infer"


def _tensor(name: str, datatype: str, shape: list, data) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _good_inputs() -> list[dict]:
    return [_tensor("text_input", "BYTES", [1, 1], [PROMPT]),
            _tensor("max_tokens", "INT32", [1, 1], [3])]


HOSTILE_INFER_BODIES = {
    "wrong datatype": {"inputs": [_tensor("text_input", "BYTES", [1, 1], [PROMPT]),
                                  _tensor("max_tokens", "BYTES", [1, 1], ["3"])]},
    "unknown datatype": {"inputs": [_tensor("text_input", "STRING", [1], [PROMPT])]},
    "string data for INT32": {"inputs": [_tensor("text_input", "BYTES", [1], [PROMPT]),
                                         _tensor("max_tokens", "INT32", [1], ["three"])]},
    "shape disagrees with data": {"inputs": [_tensor("text_input", "BYTES", [2, 3], [PROMPT]),
                                             _tensor("max_tokens", "INT32", [1], [3])]},
    "negative dim": {"inputs": [_tensor("text_input", "BYTES", [-1], [PROMPT])]},
    "absurd shape": {"inputs": [_tensor("text_input", "BYTES", [1 << 30, 1 << 30], [])]},
    "unknown input": {"inputs": [*_good_inputs(), _tensor("temperature_x", "FP32", [1], [1])]},
    "missing text_input": {"inputs": [_tensor("max_tokens", "INT32", [1], [3])]},
    "batch of two prompts": {"inputs": [_tensor("text_input", "BYTES", [2, 1], ["a", "b"]),
                                        _tensor("max_tokens", "INT32", [1], [3])]},
    "no inputs": {"inputs": []},
    "inputs not a list": {"inputs": {"text_input": PROMPT}},
    "deep nesting": {"inputs": [_tensor("text_input", "BYTES", [1],
                                        json.loads("[" * 200 + '"x"' + "]" * 200))]},
    "unknown output": {"inputs": _good_inputs(), "outputs": [{"name": "logits"}]},
    "nan temperature": {"inputs": [*_good_inputs(),
                                   _tensor("temperature", "FP32", [1], ["NaN"])]},
    "negative max_tokens": {"inputs": [_tensor("text_input", "BYTES", [1], [PROMPT]),
                                       _tensor("max_tokens", "INT32", [1], [-5])]},
    "top_p above one": {"inputs": [*_good_inputs(), _tensor("top_p", "FP32", [1], [1.5])]},
    "context logits": {"inputs": [*_good_inputs(),
                                  _tensor("return_context_logits", "BOOL", [1], [True])]},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_INFER_BODIES))
def test_hostile_infer_bodies_get_a_kserve_400(v2, case):
    response = v2.post(INFER, json=HOSTILE_INFER_BODIES[case])
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b"",
                                  b"[" * 100_000, b'{"inputs": ' + b"[" * 100_000])
def test_malformed_bodies_get_a_kserve_400(v2, body):
    for path in (INFER, "/v2/models/ensemble/generate", "/v2/models/ensemble/generate_stream"):
        response = v2.post(path, content=body)
        assert response.status_code == 400, (path, response.text)
        assert set(response.json()) == {"error"}


def test_a_huge_bytes_tensor_is_refused_with_413(v2):
    text = "x" * (5 * 1024 * 1024)
    response = v2.post(INFER, json={"inputs": [_tensor("text_input", "BYTES", [1], [text]),
                                               _tensor("max_tokens", "INT32", [1], [2])]})
    assert response.status_code == 413 and set(response.json()) == {"error"}


def test_binary_data_that_lies_about_its_size_is_refused(v2):
    header = json.dumps({"inputs": [
        {"name": "text_input", "datatype": "BYTES", "shape": [1],
         "parameters": {"binary_data_size": 4 + 1000}},
        _tensor("max_tokens", "INT32", [1], [2])]}).encode()
    blob = struct.pack("<I", 1000) + b"short"  # says 1000 bytes, holds 5
    response = v2.post(INFER, content=header + blob,
                       headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and set(response.json()) == {"error"}
    bad_header = v2.post(INFER, content=header, headers={
        "Inference-Header-Content-Length": str(len(header) + 99)})
    assert bad_header.status_code == 400


@pytest.mark.parametrize("body", [
    {"max_tokens": 3},  # no text_input
    {"text_input": PROMPT, "max_tokens": "3"},
    {"text_input": PROMPT, "max_tokens": 3, "stream": "yes"},
    {"text_input": PROMPT, "max_tokens": 3, "lora_task_id": 1},
    {"text_input": PROMPT, "max_tokens": 3, "no_such_input": 1},
    {"text_input": "", "max_tokens": 3},
    {"text_input": PROMPT, "max_tokens": 10 ** 9},
    {"text_input": PROMPT, "max_tokens": 3, "bad_words": ["w"] * 100},
    {"text_input": PROMPT, "max_tokens": 3, "end_id": 10 ** 9},
    {"text_input": PROMPT, "max_tokens": 3, "parameters": [1]},
])
def test_hostile_generate_bodies_get_a_kserve_400(v2, body):
    response = v2.post("/v2/models/ensemble/generate", json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}


def test_hostile_grpc_requests_get_invalid_argument(kserve):
    client = grpcclient.InferenceServerClient(kserve.grpc_url)
    try:
        cases = [ensemble_arrays(beam_width=4), {"max_tokens": np.array([[3]], np.int32)},
                 {**ensemble_arrays(), "max_tokens": np.array([[1.5]], np.float32)},
                 {**ensemble_arrays(), "text_input": np.array([["a"], ["b"]], dtype=object)}]
        for arrays in cases:
            with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
                client.infer("ensemble", infer_inputs(grpcclient, arrays))
    finally:
        client.close()


def test_a_grpc_message_above_the_body_limit_is_refused(kserve):
    channel = grpc.insecure_channel(kserve.grpc_url, options=[
        ("grpc.max_send_message_length", 64 << 20)])
    live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                               request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as raised:
        live(b"\n" + b"\x00" * (5 << 20), timeout=30)  # junk far past the 4 MiB cap
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    channel.close()


def test_the_daemon_still_serves_after_the_hostile_requests(kserve, v2):
    assert httpx.get(f"{kserve.base_url}/v2/health/ready").status_code == 200
    answer = v2.post("/v2/models/ensemble/generate", json={"text_input": PROMPT,
                                                          "max_tokens": 3})
    assert answer.status_code == 200 and answer.json()["text_output"]
    client = grpcclient.InferenceServerClient(kserve.grpc_url)
    assert client.is_server_ready()
    client.close()
