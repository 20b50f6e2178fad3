"""The gRPC port under the daemon's own rules, on a daemon of its own: the API key is
needed (the health calls excepted), and on SIGTERM a ModelStreamInfer in flight runs to its
end while readiness turns false and new calls are refused, then the daemon exits 0."""

from __future__ import annotations

import queue
import signal
import time

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.api.daemon import free_port, running_daemon
from tests.api.kserve.helpers import ensemble_arrays, infer_inputs

KEY = "grpc-drain-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_TOKENS = 64


def _wait_until(condition, *, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_grpc_needs_the_key_and_drains_a_stream_in_flight_on_sigterm():
    grpc_port = free_port()
    with running_daemon(kv_cache_tokens=4096, extra_args=(
            "--served-model-name", "ensemble", "--grpc-port", str(grpc_port),
            "--api-key", KEY, "--shutdown-timeout", "60")) as daemon:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_live() and client.is_server_ready()  # probes need no key
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.get_model_metadata("ensemble")
        assert client.get_model_metadata("ensemble", headers=AUTH).name == "ensemble"
        responses: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: responses.put((result, error)),
                            headers=AUTH)
        client.async_stream_infer("ensemble", infer_inputs(grpcclient, ensemble_arrays(
            max_tokens=MAX_TOKENS, stream=True, end_id=-1)))
        result, error = responses.get(timeout=60)  # it is generating
        assert error is None, error
        daemon.process.send_signal(signal.SIGTERM)
        _wait_until(lambda: not client.is_server_ready())
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            client.infer("ensemble", infer_inputs(grpcclient, ensemble_arrays(max_tokens=2)),
                         headers=AUTH)
        count = 1
        while not result.get_response().parameters["triton_final_response"].bool_param:
            result, error = responses.get(timeout=60)
            assert error is None, error
            count += 1
        assert count == MAX_TOKENS  # ran to its end, not aborted
        client.stop_stream()
        client.close()
        assert daemon.process.wait(timeout=30) == 0
