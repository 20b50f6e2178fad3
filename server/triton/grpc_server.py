"""The gRPC port (--grpc-port): a grpc.aio server on the api process's event loop, started
once the engine is up and stopped before it, beside uvicorn's HTTP server."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from server.api.admission import AdmissionController
from server.api.auth import ApiKeys
from server.api.serving import ServingState
from server.api.settings import ApiSettings
from server.triton.grpc_guard import GrpcGuard
from server.triton.grpc_service import InferenceService
from server.triton.proto import grpc_service_pb2_grpc as pb_grpc

logger = logging.getLogger("inflightd.api")
STOP_GRACE_S = 5.0  # after the HTTP drain, for calls that are still finishing


class TritonGrpcServer:
    def __init__(self, *, settings: ApiSettings, admission: AdmissionController,
                 state: Callable[[], ServingState]) -> None:
        self._settings = settings
        keys = ApiKeys(settings.api_keys) if settings.api_keys else None
        self._service = InferenceService(state=state,
                                         guard=GrpcGuard(admission=admission, keys=keys))
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listens on the host and port of the settings; the same body cap as HTTP."""
        limit = self._settings.max_request_body_bytes
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                          ("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self._service, server)
        address = f"{self._settings.host}:{self._settings.grpc_port}"
        self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        logger.info("KServe v2 gRPC listening on %s:%d", self._settings.host, self.port,
                    extra={"fields": {"event": "grpc_listening", "port": self.port}})

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(STOP_GRACE_S)
            self._server = None
