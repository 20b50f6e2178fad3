"""The HTTP endpoints. Bodies are parsed here (not by FastAPI) so that malformed JSON and
every validation failure become OpenAI-shaped 400s."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from server.api.chat import create_chat_completion
from server.api.completions import create_completion
from server.api.errors import UNAVAILABLE, APIError, ClientDisconnected, error_body
from server.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.api.openapi_bodies import request_body
from server.api.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                 TokenizeRequest, message_dicts)
from server.api.responses import DetokenizeResponse, ModelCard, ModelList, TokenizeResponse
from server.api.responses_api.handler import (create_response, delete_response,
                                              retrieve_response)
from server.api.responses_api.request import ResponsesRequest
from server.api.serving import ServingState
from server.api.tokenizer import TokenizerError
from server.engine.service.client import EngineDeadError

router = APIRouter()
Body = TypeVar("Body", bound=BaseModel)


def _state(request: Request) -> ServingState:
    return request.app.state.serving


async def read_body(request: Request) -> bytes:
    """The whole body, within --request-body-timeout (a 408 past it)."""
    timeout_s = _state(request).config.api.request_body_timeout_s
    try:
        return await asyncio.wait_for(request.body(), timeout_s)
    except asyncio.TimeoutError:
        raise StarletteHTTPException(
            408, f"the request body did not arrive within {timeout_s:g} s",
            headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise ClientDisconnected() from None  # not a server error: the client left


async def _parse(request: Request, model: type[Body]) -> Body:
    return model.model_validate_json(await read_body(request))


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse(error_body(message, type=UNAVAILABLE, code="engine_unavailable"),
                        status_code=503)


@router.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    body = await _parse(request, ChatCompletionRequest)
    return await create_chat_completion(_state(request), request, body)


@router.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
async def completions(request: Request) -> Response:
    body = await _parse(request, CompletionRequest)
    return await create_completion(_state(request), request, body)


@router.post("/v1/responses", openapi_extra=request_body(ResponsesRequest))
async def responses(request: Request) -> Response:
    body = await _parse(request, ResponsesRequest)
    return await create_response(_state(request), request.app.state.response_store, request,
                                 body)


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> JSONResponse:
    return await retrieve_response(request.app.state.response_store, response_id)


@router.delete("/v1/responses/{response_id}")
async def remove_response(request: Request, response_id: str) -> JSONResponse:
    return await delete_response(request.app.state.response_store, response_id)


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    state = _state(request)
    return JSONResponse(ModelList(data=[_model_card(state, name)
                                        for name in state.model_names]).model_dump())


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> JSONResponse:
    state = _state(request)
    return JSONResponse(_model_card(state, state.check_model(model_id)).model_dump())


def _model_card(state: ServingState, name: str) -> ModelCard:
    return ModelCard(id=name, created=state.started_at, root=state.info.model_name,
                     max_model_len=state.info.max_model_len)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while the engine process is alive and answers a ping in time; 503 otherwise.
    An engine in the middle of a long step answers only after it, so one that sent a step's
    outputs within the timeout counts as answering too."""
    state = _state(request)
    timeout_s = state.config.api.health_timeout_s
    if not state.client.is_alive:
        return _unavailable(state.client.failure or "the engine is not running")
    try:
        await state.client.stats(timeout_s=timeout_s)
    except asyncio.TimeoutError:
        if state.client.seconds_since_last_message > timeout_s:
            return _unavailable(f"the engine did not answer within {timeout_s:g} s")
    except EngineDeadError as exc:
        return _unavailable(str(exc))
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once the model is loaded and the engine runs (it is, whenever this answers,
    unless the engine has since died); 503 while draining for shutdown."""
    state = _state(request)
    if not state.client.is_alive:
        return _unavailable(state.client.failure or "the engine is not running")
    if request.app.state.admission.draining:
        return JSONResponse(error_body("the server is shutting down", type=UNAVAILABLE,
                                       code="shutting_down"), status_code=503)
    return JSONResponse({"status": "ready", "model": state.model_name})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus metrics (metrics.py). The engine's figures are asked for first; if it
    does not answer in time, the last ones it sent are shown."""
    state = _state(request)
    try:
        await state.client.stats(timeout_s=state.config.api.health_timeout_s)
    except (asyncio.TimeoutError, EngineDeadError):
        pass
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.get("/v1/engine/stats")
async def engine_stats(request: Request) -> JSONResponse:
    """The engine's live figures (requests, KV blocks, prefix cache, token totals)."""
    state = _state(request)
    try:
        stats = await state.client.stats(timeout_s=state.config.api.health_timeout_s)
    except (asyncio.TimeoutError, EngineDeadError) as exc:
        return _unavailable(f"the engine did not report its stats: {exc or 'timeout'}")
    info = state.info
    return JSONResponse({**dataclasses.asdict(stats),
                         "num_api_open_requests": state.client.num_open_requests,
                         # every asyncio task of the api process, this request's included:
                         # back to its idle figure once no client is served (a leak check)
                         "num_api_tasks": len(asyncio.all_tasks()),
                         "block_size": info.block_size, "kv_cache_tokens": info.kv_cache_tokens,
                         "kv_cache_dtype": info.kv_cache_dtype,
                         "max_model_len": info.max_model_len})


@router.post("/tokenize", openapi_extra=request_body(TokenizeRequest))
async def tokenize(request: Request) -> JSONResponse:
    body = await _parse(request, TokenizeRequest)
    state = _state(request)
    state.check_model(body.model)
    tokenizer = state.require_tokenizer()
    if body.messages is not None:
        try:
            tokens = tokenizer.encode_chat(message_dicts(body.messages))
        except TokenizerError as exc:
            raise APIError(str(exc), param="messages") from exc
    else:
        tokens = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return JSONResponse(TokenizeResponse(tokens=tokens, count=len(tokens),
                                         max_model_len=state.info.max_model_len).model_dump())


@router.post("/detokenize", openapi_extra=request_body(DetokenizeRequest))
async def detokenize(request: Request) -> JSONResponse:
    body = await _parse(request, DetokenizeRequest)
    state = _state(request)
    state.check_model(body.model)
    state.check_token_ids(body.tokens, "tokens")
    text = state.require_tokenizer().decode(body.tokens)
    return JSONResponse(DetokenizeResponse(prompt=text).model_dump())
