"""The /v2 HTTP routes: KServe v2 health, metadata and infer, Triton's model config and its
generate extension (generate, generate_stream), over the same engine as the OpenAI API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from server.api.admission import admission_ticket
from server.api.routes import read_body
from server.api.serving import ServingState
from server.api.streaming import SSEResponse, first_step, sse_event, unless_disconnected
from server.triton.ensemble import (MODEL_VERSION, model_config, model_metadata,
                                    repository_index, server_metadata)
from server.triton.errors import TritonError, kserve_error_body
from server.triton.generate import EnsembleRun
from server.triton.generate_events import GenerateEvents
from server.triton.outputs import Step, output_tensors, with_requested_outputs
from server.triton.kserve_json import HEADER_LENGTH, infer_response, parse_infer_body
from server.triton.request import EnsembleRequest, from_generate_body, from_tensors

router = APIRouter(include_in_schema=False)
MODEL = "/v2/models/{name}"
VERSIONED = "/v2/models/{name}/versions/{version}"


def _state(request: Request) -> ServingState:
    return request.app.state.serving


# the model names of TensorRT-LLM's Triton repository, which its clients send as they are
TENSORRT_LLM_MODEL_NAMES = ("ensemble", "tensorrt_llm", "tensorrt_llm_bls")


def check_model(state: ServingState, name: str, version: str | None = None) -> str:
    if name not in state.model_names:
        hint = (f" (to answer TensorRT-LLM's clients under '{name}', start the daemon with "
                f"--served-model-name {name})" if name in TENSORRT_LLM_MODEL_NAMES else "")
        raise TritonError(f"unknown model: '{name}'; this server serves "
                          f"{', '.join(state.model_names)}{hint}", status_code=404)
    if version not in (None, "", MODEL_VERSION):
        raise TritonError(f"unknown version {version!r} of model '{name}'; it has version "
                          f"{MODEL_VERSION}", status_code=404)
    return name


def unavailable_reason(state: ServingState, *, draining: bool) -> str | None:
    """Why the model cannot take requests now, or None when it is ready."""
    if not state.client.is_alive:
        return state.client.failure or "the engine is not running"
    return "the server is shutting down" if draining else None


@router.get("/v2")
async def metadata(_request: Request) -> JSONResponse:
    return JSONResponse(server_metadata())


@router.get("/v2/health/live")
async def live(request: Request) -> Response:
    """200 while the daemon runs its engine; 503 once the engine is gone (it exits soon)."""
    state = _state(request)
    if not state.client.is_alive:
        return JSONResponse(kserve_error_body(state.client.failure or "the engine is gone"),
                            status_code=503)
    return Response(status_code=200)


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    reason = unavailable_reason(_state(request), draining=request.app.state.admission.draining)
    if reason is not None:
        return JSONResponse(kserve_error_body(reason), status_code=503)
    return Response(status_code=200)


@router.post("/v2/repository/index")
async def index(request: Request) -> JSONResponse:
    state = _state(request)
    ready = unavailable_reason(state, draining=request.app.state.admission.draining) is None
    return JSONResponse(repository_index(state.model_names, ready=ready))


@router.get(MODEL)
@router.get(VERSIONED)
async def model(request: Request, name: str, version: str | None = None) -> JSONResponse:
    return JSONResponse(model_metadata(check_model(_state(request), name, version)))


@router.get(MODEL + "/ready")
@router.get(VERSIONED + "/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    state = _state(request)
    check_model(state, name, version)
    reason = unavailable_reason(state, draining=request.app.state.admission.draining)
    if reason is not None:
        return JSONResponse(kserve_error_body(reason), status_code=503)
    return Response(status_code=200)


@router.get(MODEL + "/config")
@router.get(VERSIONED + "/config")
async def config(request: Request, name: str, version: str | None = None) -> JSONResponse:
    state = _state(request)
    return JSONResponse(model_config(check_model(state, name, version),
                                     max_batch_size=state.config.scheduler.max_num_seqs))


async def _json_body(request: Request) -> object:
    raw = await read_body(request)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the limit
        raise TritonError(f"the request body is not valid JSON: {exc}") from None


@router.post(MODEL + "/generate")
@router.post(VERSIONED + "/generate")
async def generate(request: Request, name: str, version: str | None = None) -> JSONResponse:
    """One answer, whatever the request's `stream` says. Any body is read as JSON: the
    seeds' curl sends none of Content-Type."""
    state = _state(request)
    check_model(state, name, version)
    body = await _json_body(request)
    ensemble = from_generate_body(body)
    run = await EnsembleRun.start(state, ensemble, ticket=admission_ticket(request.scope))
    step = await unless_disconnected(request, run.collect())
    return JSONResponse(_answers(name, ensemble, body).document(step))


@router.post(MODEL + "/generate_stream")
@router.post(VERSIONED + "/generate_stream")
async def generate_stream(request: Request, name: str, version: str | None = None) -> Response:
    """Server-sent events, one per engine step as TensorRT-LLM's decoupled model answers
    with stream set; with stream false, one event with the whole answer."""
    state = _state(request)
    check_model(state, name, version)
    body = await _json_body(request)
    ensemble = from_generate_body(body)
    run = await EnsembleRun.start(state, ensemble, ticket=admission_ticket(request.scope))
    event = _answers(name, ensemble, body).event
    if ensemble.stream is False:  # the whole answer first, so a failure is still a 4xx
        return SSEResponse(_one(event(await unless_disconnected(request, run.collect()))))
    steps = run.steps()
    if ensemble.guide_type is not None:  # a guide that fails to compile: a 400, not a stream
        steps = await first_step(request, steps)
    return SSEResponse(_events(steps, event))


async def _one(event: bytes) -> AsyncIterator[bytes]:
    yield event


async def _events(steps: AsyncIterator[Step],
                  event: Callable[[Step], bytes]) -> AsyncIterator[bytes]:
    try:
        async for step in steps:
            yield event(step)
    except TritonError as exc:  # mid-stream: Triton sends the error as an event
        yield sse_event(json.dumps(kserve_error_body(exc.message)))


def _answers(name: str, ensemble: EnsembleRequest, body: dict) -> GenerateEvents:
    return GenerateEvents(model_name=name, model_version=MODEL_VERSION, request=ensemble,
                          request_id=body.get("id"))


@router.post(MODEL + "/infer")
@router.post(VERSIONED + "/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    state = _state(request)
    check_model(state, name, version)
    body = parse_infer_body(await read_body(request), request.headers.get(HEADER_LENGTH))
    ensemble = with_requested_outputs(from_tensors(body.inputs), body.outputs)
    run = await EnsembleRun.start(state, ensemble, ticket=admission_ticket(request.scope))
    step = await unless_disconnected(request, run.collect())
    tensors = output_tensors(step, ensemble, requested=body.outputs)
    content, header_length = infer_response(
        model_name=name, model_version=MODEL_VERSION, request_id=body.request_id,
        tensors=tensors, binary=body.binary_outputs, binary_by_default=body.binary_by_default)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})
