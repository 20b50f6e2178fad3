"""One daemon for every Triton / KServe v2 test: the default model served under the names a
TensorRT-LLM deployment uses, with the gRPC port on (no API key: the seeds' curl sends
none; the gRPC key check is pinned in tests/unit/test_triton_grpc_guard.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.api.daemon import Daemon, free_port, running_daemon
from tests.api.kserve.helpers import MODEL_NAMES


class KServeDaemon:
    def __init__(self, daemon: Daemon, grpc_port: int) -> None:
        self.daemon = daemon
        self.http_url = f"127.0.0.1:{daemon.port}"  # tritonclient takes host:port
        self.grpc_url = f"127.0.0.1:{grpc_port}"
        self.base_url = daemon.base_url


@pytest.fixture(scope="package")
def kserve() -> KServeDaemon:
    grpc_port = free_port()
    names = [arg for name in MODEL_NAMES for arg in ("--served-model-name", name)]
    with running_daemon(max_num_seqs=8, kv_cache_tokens=8192,
                        extra_args=(*names, "--grpc-port", str(grpc_port))) as daemon:
        yield KServeDaemon(daemon, grpc_port)


@pytest.fixture(scope="package")
def v2(kserve: KServeDaemon) -> httpx.Client:
    """Raw HTTP, for the /v2 routes."""
    with httpx.Client(base_url=kserve.base_url, timeout=120) as client:
        yield client
