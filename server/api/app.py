"""The FastAPI application: the factory, and the lifespan that starts the engine process
and loads the tokenizer before the first request is served (and stops the engine after).

Requests pass, outermost first: API keys (auth.py) -> admission and draining
(admission.py) -> the body size cap (body_limit.py) -> the routes."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.api.admission import AdmissionController, AdmissionMiddleware
from server.api.auth import ApiKeyMiddleware, ApiKeys
from server.api.body_limit import BodySizeLimitMiddleware
from server.api.errors import install_error_handlers
from server.api.metrics import ServerMetrics
from server.api.routes import router
from server.api.serving import ServingState
from server.api.settings import ServeConfig
from server.api.shutdown import DaemonControl
from server.api.responses_api.store import ResponseStore
from server.api.tokenizer import Tokenizer
from server.engine.service.client import EngineAttachment, EngineClient, EngineStartupError
from server.triton.http_routes import router as triton_router

logger = logging.getLogger("inflightd.api")

GC_THRESHOLDS = (50_000, 20, 20)  # gc.set_threshold once serving; see _start_serving


def create_app(config: ServeConfig, *, attachment: EngineAttachment | None = None,
               metrics_dir: str | None = None) -> FastAPI:
    """The app; `app.state.control` is its DaemonControl, for the server that runs it.
    attachment: serve through an engine process shared with other api processes (and
    their metrics directory, metrics_dir) instead of starting one."""
    api = config.api
    client = EngineClient(model_config=config.model, cache_config=config.cache,
                          scheduler_config=config.scheduler, log_level=api.log_level,
                          log_format=api.log_format,
                          on_step=lambda step: metrics.observe_step(step),
                          kv_events_config=config.kv_events, attachment=attachment)
    metrics = ServerMetrics(model_name=config.served_model_name,
                            latest_stats=lambda: client.latest_stats,
                            compat=api.metrics_compat, engine_info=lambda: client.started_info,
                            prefix_caching=config.cache.enable_prefix_caching,
                            shared_dir=metrics_dir)
    admission = AdmissionController(max_queued_requests=api.max_queued_requests,
                                    waiting_in_engine=lambda: client.num_waiting_requests)
    control = DaemonControl(admission=admission, client=client,
                            shutdown_timeout_s=api.shutdown_timeout_s,
                            engine_failure_exit_delay_s=api.engine_failure_exit_delay_s)

    grpc_server = None
    if api.grpc_port is not None:
        from server.triton.grpc_server import TritonGrpcServer

        grpc_server = TritonGrpcServer(settings=api, admission=admission,
                                       state=lambda: app.state.serving)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.serving = await _start_serving(config, client, metrics)
        try:
            if grpc_server is not None:
                await grpc_server.start()
            control.serving_started()
            yield
        finally:
            await control.serving_stopped()
            if grpc_server is not None:
                await grpc_server.stop()
            logger.info("stopping the engine")
            await client.shutdown()

    app = FastAPI(title="inflightd", version="0.1.0",
                  description="An OpenAI-compatible LLM serving daemon", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.admission = admission
    app.state.control = control
    app.state.response_store = ResponseStore(
        max_responses=api.responses_store_max,
        max_bytes=int(api.responses_store_max_mb * 2**20), max_age_s=api.responses_store_ttl_s)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(triton_router)  # Triton / KServe v2 (/v2/...)
    # add_middleware wraps what is there: the last added runs first.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=api.max_request_body_bytes)
    app.add_middleware(AdmissionMiddleware, controller=admission)
    if api.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=ApiKeys(api.api_keys),
                           protect_metrics=api.metrics_auth)
    return app


async def _start_serving(config: ServeConfig, client: EngineClient,
                         metrics: ServerMetrics) -> ServingState:
    logger.info("starting the engine for %s", config.model.model)
    try:
        info = await client.start(timeout_s=config.api.engine_startup_timeout_s)
    except EngineStartupError as exc:
        logger.error("could not start the engine: %s", exc)
        raise
    try:
        tokenizer = None
        if info.tokenizer_dir is not None:
            tokenizer = await asyncio.to_thread(Tokenizer.load, info.tokenizer_dir)
        else:
            logger.warning("model %s has no tokenizer: only token-id prompts will work",
                           info.model_name)
    except BaseException:
        await client.shutdown()
        raise
    state = ServingState(config=config, client=client, info=info, tokenizer=tokenizer,
                         metrics=metrics)
    _log_startup(state)
    # What start-up made (the web stack, transformers, the tokenizer: some 350,000 objects)
    # lives as long as the process: frozen, the collector never walks it again. Unfrozen,
    # each full collection walked it for up to 270 ms with 512 streams open, a stall every
    # stream saw (bench/api_overhead.py).
    gc.collect()
    gc.freeze()
    # Each open stream holds some 230 tracked objects (tasks, coroutines, the connection):
    # at 2,048 streams a full collection walks half a million of them, 260 ms in which no
    # stream moves, and with Python's default thresholds (700, 10, 10) one came every few
    # seconds (17 in one 2,048-stream run, 2.4 s in all). Young objects are mostly a step's
    # outputs and chunks, dead long before 50,000 allocations: the same run had no full
    # collection, its longest pause 19 ms, 23 % less CPU per token and the same memory.
    gc.set_threshold(*GC_THRESHOLDS)
    return state


def log_listening(state: ServingState) -> None:
    """The "listening" line: logged by the HTTP server once its socket accepts connections
    (http_server.py), not when the app has started: with several api processes on one
    port, a process still collecting garbage after its start-up is not yet one the kernel
    hands connections to."""
    config, info = state.config, state.info
    url = f"http://{config.api.host}:{config.api.port}"
    precision = info.dtype if info.quantization is None else f"{info.dtype}, {info.quantization}"
    logger.info("inflightd listening on %s, serving %r (%s on %s, %s)", url, state.model_name,
                info.model_name, info.device, precision,
                extra={"fields": {"event": "listening", "url": url, "host": config.api.host,
                                  "port": config.api.port, "model": state.model_name,
                                  "engine_model": info.model_name, "device": info.device,
                                  "dtype": info.dtype, "quantization": info.quantization,
                                  "api_keys": len(config.api.api_keys)}})


def _log_startup(state: ServingState) -> None:
    config, info = state.config, state.info
    prefix_caching = config.cache.enable_prefix_caching
    logger.info("KV cache: %d tokens (%d blocks of %d, %s); max model length %d tokens; "
                "prefix caching %s", info.kv_cache_tokens, info.num_kv_blocks, info.block_size,
                info.kv_cache_dtype, info.max_model_len, "on" if prefix_caching else "off",
                extra={"fields": {"event": "kv_cache", "kv_cache_tokens": info.kv_cache_tokens,
                                  "num_kv_blocks": info.num_kv_blocks,
                                  "block_size": info.block_size,
                                  "kv_cache_dtype": info.kv_cache_dtype,
                                  "max_model_len": info.max_model_len,
                                  "prefix_caching": prefix_caching}})
