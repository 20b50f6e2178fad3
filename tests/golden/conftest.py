"""Fixtures shared by the golden tests: the default model, converted once per test session
into a temporary cache (so tests never read or write ~/.cache/inflightd)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Golden tests read local files only; make any accidental hub lookup fail instead of download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def inflightd_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root (what INFLIGHTD_CACHE names) private to this test session."""
    return tmp_path_factory.mktemp("inflightd-cache")


@pytest.fixture(scope="session")
def converted_default_model(inflightd_cache: Path) -> Path:
    """The default model converted from its packaged GGUF into a Hugging Face directory."""
    from server.engine.loading.weights import default_model_dir

    return default_model_dir(cache_dir=inflightd_cache)


@pytest.fixture(scope="module")
def one_torch_thread():
    """A module's tests on one torch thread (helpers.single_torch_thread says why); ask for
    it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    from tests.golden.helpers import single_torch_thread

    with single_torch_thread():
        yield
