"""The FastAPI application: the factory, and the lifespan that starts the engine process
and loads the tokenizer before the first request is served (and stops the engine after)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.api.errors import install_error_handlers
from server.api.routes import router
from server.api.serving import ServingState
from server.api.settings import ServeConfig
from server.api.tokenizer import Tokenizer
from server.engine.client import EngineClient, EngineStartupError

logger = logging.getLogger("inflightd.api")


def create_app(config: ServeConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.serving = await _start_serving(config)
        try:
            yield
        finally:
            logger.info("stopping the engine")
            await app.state.serving.client.shutdown()

    app = FastAPI(title="inflightd", version="0.1.0",
                  description="An OpenAI-compatible LLM serving daemon", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(router)
    return app


async def _start_serving(config: ServeConfig) -> ServingState:
    client = EngineClient(model_config=config.model, cache_config=config.cache,
                          scheduler_config=config.scheduler, log_level=config.api.log_level)
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
    state = ServingState(config=config, client=client, info=info, tokenizer=tokenizer)
    logger.info("inflightd listening on http://%s:%d, serving %r (%s on %s, %s)",
                config.api.host, config.api.port, state.model_name, info.model_name,
                info.device, info.dtype)
    logger.info("KV cache: %d tokens (%d blocks of %d); max model length %d tokens; "
                "prefix caching %s", info.kv_cache_tokens, info.num_kv_blocks, info.block_size,
                info.max_model_len, "on" if config.cache.enable_prefix_caching else "off")
    return state
