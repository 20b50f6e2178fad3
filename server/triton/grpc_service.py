"""KServe v2's GRPCInferenceService on the engine: health, metadata, Triton's model config,
ModelInfer, and ModelStreamInfer answering step by step as TensorRT-LLM's decoupled model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from google.protobuf import json_format

from server.api.serving import ServingState
from server.triton.ensemble import (MODEL_VERSION, model_config, model_metadata,
                                    repository_index, server_metadata)
from server.triton.errors import TritonError
from server.triton.generate import EnsembleRun
from server.triton.outputs import output_tensors, with_requested_outputs
from server.triton.grpc_guard import GrpcGuard
from server.triton.grpc_tensors import (bool_parameter, infer_response, input_tensors,
                                        requested_outputs)
from server.triton.http_routes import check_model, unavailable_reason
from server.triton.proto import grpc_service_pb2 as pb
from server.triton.proto import grpc_service_pb2_grpc as pb_grpc
from server.triton.proto import model_config_pb2
from server.triton.request import EnsembleRequest, from_tensors

EMPTY_FINAL = "triton_enable_empty_final_response"
logger = logging.getLogger("inflightd.api")


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, *, state: Callable[[], ServingState], guard: GrpcGuard) -> None:
        self._state = state  # the app's ServingState, set once the engine is up
        self._guard = guard

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._state().client.is_alive)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        reason = unavailable_reason(self._state(), draining=self._guard.draining)
        return pb.ServerReadyResponse(ready=reason is None)

    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        state = self._state()
        async with self._guard.errors(context):
            check_model(state, request.name, request.version)
        reason = unavailable_reason(state, draining=self._guard.draining)
        return pb.ModelReadyResponse(ready=reason is None)

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        await self._guard.authorize(context)
        return pb.ServerMetadataResponse(**server_metadata())

    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        await self._guard.authorize(context)
        async with self._guard.errors(context):
            name = check_model(self._state(), request.name, request.version)
        return json_format.ParseDict(model_metadata(name), pb.ModelMetadataResponse())

    async def ModelConfig(self, request, context) -> pb.ModelConfigResponse:
        await self._guard.authorize(context)
        state = self._state()
        async with self._guard.errors(context):
            name = check_model(state, request.name, request.version)
        document = model_config(name, max_batch_size=state.config.scheduler.max_num_seqs)
        config = json_format.ParseDict(document, model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request, context) -> pb.RepositoryIndexResponse:
        await self._guard.authorize(context)
        state = self._state()
        ready = unavailable_reason(state, draining=self._guard.draining) is None
        return json_format.ParseDict({"models": repository_index(state.model_names,
                                                                 ready=ready)},
                                     pb.RepositoryIndexResponse())

    async def ModelInfer(self, request, context) -> pb.ModelInferResponse:
        await self._guard.authorize(context)
        async with self._guard.admitted(context) as ticket:  # TritonErrors end the call
            ensemble, requested = self._read(request)
            run = await EnsembleRun.start(self._state(), ensemble, ticket=ticket)
            step = await run.collect()
            return infer_response(
                model_name=request.model_name, model_version=MODEL_VERSION,
                request_id=request.id,
                tensors=output_tensors(step, ensemble, requested=requested))

    async def ModelStreamInfer(self, request_iterator,
                               context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request on the stream runs at once, beside the others; its responses come
        as its steps do (or one response with `stream` false), each an error_message when
        it fails, so the stream itself stays open."""
        await self._guard.authorize(context)
        queue: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        done = object()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._stream_one(request, queue.put_nowait))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                queue.put_nowait(done)

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not done:
                yield item
        finally:
            for task in (reader, *tasks):
                task.cancel()  # the client left: cancelling aborts their engine requests

    async def _stream_one(self, request: pb.ModelInferRequest,
                          send: Callable[[pb.ModelStreamInferResponse], None]) -> None:
        def error(message: str) -> None:
            send(pb.ModelStreamInferResponse(
                error_message=message, infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, id=request.id)))

        try:
            async with self._guard.admission() as ticket:
                ensemble, requested = self._read(request)
                run = await EnsembleRun.start(self._state(), ensemble, ticket=ticket)
                empty_final = bool_parameter(request, EMPTY_FINAL)

                def respond(step, final: bool) -> None:
                    send(pb.ModelStreamInferResponse(infer_response=infer_response(
                        model_name=request.model_name, model_version=MODEL_VERSION,
                        request_id=request.id, final=final,
                        tensors=output_tensors(step, ensemble, requested=requested))))

                if ensemble.stream is False:
                    respond(await run.collect(), final=not empty_final)
                else:
                    async for step in run.steps():
                        respond(step, final=step.finished and not empty_final)
                if empty_final:
                    send(pb.ModelStreamInferResponse(infer_response=infer_response(
                        model_name=request.model_name, model_version=MODEL_VERSION,
                        request_id=request.id, tensors=(), final=True)))
        except TritonError as exc:
            error(exc.message)
        except Exception as exc:  # the stream's other requests go on; this one is told
            logger.exception("unexpected error in a ModelStreamInfer request")
            error(f"internal error: {type(exc).__name__}")

    def _read(self, request: pb.ModelInferRequest
              ) -> tuple[EnsembleRequest, tuple[str, ...] | None]:
        check_model(self._state(), request.model_name, request.model_version)
        requested = requested_outputs(request)
        return with_requested_outputs(from_tensors(input_tensors(request)), requested), \
            requested
