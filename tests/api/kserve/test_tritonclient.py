"""PyPI tritonclient against the daemon, written as a TensorRT-LLM + Triton user writes it:
HTTP and gRPC, sync and asyncio, health, metadata, config, infer, and decoupled streaming
through ModelStreamInfer."""

from __future__ import annotations

import asyncio
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from tritonclient.utils import InferenceServerException

from tests.api.kserve.helpers import MODEL_NAMES, PROMPT, ensemble_arrays, infer_inputs, \
    text_of


@pytest.fixture(scope="module")
def greedy_text(v2) -> str:
    response = v2.post("/v2/models/ensemble/generate", json={"text_input": PROMPT,
                                                             "max_tokens": 12})
    return response.json()["text_output"]


@pytest.fixture(scope="module")
def http_client(kserve):
    client = httpclient.InferenceServerClient(kserve.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(kserve):
    client = grpcclient.InferenceServerClient(kserve.grpc_url)
    yield client
    client.close()


def test_http_health_metadata_and_config(http_client):
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready("ensemble") and http_client.is_model_ready("tensorrt_llm")
    assert not _ready_or_missing(http_client, "llama")
    metadata = http_client.get_model_metadata("ensemble")
    assert {"text_input", "max_tokens", "bad_words", "stop_words"} <= \
        {i["name"] for i in metadata["inputs"]}
    config = http_client.get_model_config("ensemble")
    assert config["model_transaction_policy"]["decoupled"] is True
    assert http_client.get_server_metadata()["name"] == "inflightd"
    assert [(m["name"], m["state"]) for m in http_client.get_model_repository_index()] == \
        [(name, "READY") for name in MODEL_NAMES]


def _ready_or_missing(client, name: str) -> bool:
    try:
        return client.is_model_ready(name)
    except InferenceServerException:
        return False


def test_http_infer_with_binary_tensors_as_the_client_sends_them(http_client, greedy_text):
    result = http_client.infer("ensemble", infer_inputs(httpclient, ensemble_arrays()))
    assert text_of(result) == greedy_text
    assert result.as_numpy("text_output").shape == (1, 1)


def test_http_infer_with_json_tensors_and_named_outputs(http_client, greedy_text):
    inputs = infer_inputs(httpclient, ensemble_arrays(return_log_probs=True))
    for tensor, array in zip(inputs, ensemble_arrays(return_log_probs=True).values()):
        tensor.set_data_from_numpy(array, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("text_output", binary_data=False),
               httpclient.InferRequestedOutput("output_log_probs", binary_data=True)]
    result = http_client.infer("ensemble", inputs, outputs=outputs)
    assert result.as_numpy("text_output").reshape(-1)[0] == greedy_text
    assert result.as_numpy("output_log_probs").shape == (1, 1, 12)


def test_http_asyncio_client_infers_concurrently(kserve, greedy_text):
    async def main() -> list[str]:
        client = httpclient_aio.InferenceServerClient(kserve.http_url)
        try:
            assert await client.is_server_ready()
            results = await asyncio.gather(*(
                client.infer("ensemble", infer_inputs(httpclient_aio, ensemble_arrays()))
                for _ in range(3)))
            return [text_of(r) for r in results]
        finally:
            await client.close()

    assert asyncio.run(main()) == [greedy_text] * 3


def test_grpc_health_metadata_and_config(grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("ensemble")
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        grpc_client.is_model_ready("llama")
    metadata = grpc_client.get_model_metadata("tensorrt_llm")
    assert metadata.name == "tensorrt_llm" and metadata.versions == ["1"]
    config = grpc_client.get_model_config("ensemble").config
    assert config.model_transaction_policy.decoupled
    assert [i.name for i in config.input][:2] == ["text_input", "max_tokens"]
    assert [m.name for m in grpc_client.get_model_repository_index().models] == \
        list(MODEL_NAMES)


def test_grpc_infer(grpc_client, greedy_text):
    result = grpc_client.infer("ensemble", infer_inputs(grpcclient, ensemble_arrays()))
    assert text_of(result) == greedy_text


def test_grpc_stream_infer_sends_one_response_per_step(grpc_client, greedy_text):
    """The decoupled loop of TensorRT-LLM's example client: a callback collects the
    responses until the one flagged triton_final_response."""
    responses: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        grpc_client.async_stream_infer("ensemble", infer_inputs(
            grpcclient, ensemble_arrays(stream=True)), request_id="42")
        pieces = []
        while True:
            result, error = responses.get(timeout=60)
            assert error is None, error
            response = result.get_response()
            assert response.id == "42"
            pieces.append(text_of(result))
            if response.parameters["triton_final_response"].bool_param:
                break
    finally:
        grpc_client.stop_stream()
    assert len(pieces) >= 8 and "".join(pieces) == greedy_text


def test_grpc_stream_reports_a_bad_request_on_the_stream(grpc_client):
    responses: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        grpc_client.async_stream_infer("ensemble", infer_inputs(
            grpcclient, ensemble_arrays(stream=True, beam_width=3)))
        result, error = responses.get(timeout=60)
    finally:
        grpc_client.stop_stream()
    assert result is None and "beam_width" in str(error)


def test_grpc_asyncio_stream_infer_runs_requests_side_by_side(kserve, greedy_text):
    async def main() -> dict[str, str]:
        client = grpcclient_aio.InferenceServerClient(kserve.grpc_url)

        async def requests():
            for request_id in ("a", "b"):
                yield {"model_name": "ensemble", "request_id": request_id,
                       "inputs": infer_inputs(grpcclient_aio, ensemble_arrays(stream=True))}

        texts: dict[str, str] = {"a": "", "b": ""}
        finished: set[str] = set()
        try:
            assert await client.is_server_live()
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                response = result.get_response()
                texts[response.id] += text_of(result)
                if response.parameters["triton_final_response"].bool_param:
                    finished.add(response.id)
                if finished == {"a", "b"}:
                    break
        finally:
            await client.close()
        return texts

    assert asyncio.run(asyncio.wait_for(main(), 120)) == {"a": greedy_text, "b": greedy_text}


def test_grpc_asyncio_infer_with_a_random_seed_repeats(kserve):
    async def main() -> list[str]:
        client = grpcclient_aio.InferenceServerClient(kserve.grpc_url)
        arrays = ensemble_arrays(top_k=40, temperature=0.9)
        arrays["random_seed"] = np.array([[1234]], dtype=np.uint64)
        try:
            results = [await client.infer("ensemble", infer_inputs(grpcclient_aio, arrays))
                       for _ in range(2)]
            return [text_of(r) for r in results]
        finally:
            await client.close()

    first, second = asyncio.run(main())
    assert first == second


def test_grpc_stream_with_an_empty_final_response_ends_with_it(grpc_client, greedy_text):
    responses: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        grpc_client.async_stream_infer("ensemble", infer_inputs(
            grpcclient, ensemble_arrays(stream=True)), enable_empty_final_response=True)
        pieces, finals = [], []
        while not finals or not finals[-1]:
            result, error = responses.get(timeout=60)
            assert error is None, error
            finals.append(result.get_response().parameters["triton_final_response"].bool_param)
            if result.as_numpy("text_output") is not None:
                pieces.append(text_of(result))
    finally:
        grpc_client.stop_stream()
    assert finals.count(True) == 1 and len(pieces) == len(finals) - 1
    assert "".join(pieces) == greedy_text


def _successes(v2) -> float:
    lines = v2.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("inflightd:request_success_total"))


def test_grpc_requests_count_in_the_same_metrics_as_http(v2, grpc_client):
    before = _successes(v2)
    grpc_client.infer("ensemble", infer_inputs(grpcclient, ensemble_arrays(max_tokens=2)))
    assert _successes(v2) == before + 1
