"""Fixtures: one real daemon (default model, CPU) for the whole session, and clients for it."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.api.daemon import Daemon, running_daemon
from tests.api.helpers import MAX_NUM_SEQS


@pytest.fixture(scope="session")
def daemon() -> Daemon:
    with running_daemon(max_num_seqs=MAX_NUM_SEQS, kv_cache_tokens=16384) as running:
        yield running


@pytest.fixture(scope="session")
def model_name(daemon: Daemon) -> str:
    return httpx.get(f"{daemon.base_url}/v1/models", timeout=10).json()["data"][0]["id"]


@pytest.fixture
def client(daemon: Daemon) -> openai.OpenAI:
    with openai.OpenAI(base_url=f"{daemon.base_url}/v1", api_key="not-needed",
                       max_retries=0, timeout=120) as sdk_client:
        yield sdk_client


@pytest.fixture(scope="session")
def http(daemon: Daemon) -> httpx.Client:
    with httpx.Client(base_url=daemon.base_url, timeout=120) as http_client:
        yield http_client
