"""The engine's packages import downward only, and none of server/engine imports the web
stack (the GPU image has no fastapi, pydantic or uvicorn):

    core, llm                        the engine and its in-process front
    service                          the engine as processes (loop, client, messages,
                                     tensor-parallel workers)
    step                             one step: runner, inputs, sampler, decode graphs
    loading, gpu                     weights and engine directories; CUDA plumbing and
                                     the choice of ops
    models, parallel, ops, attention the model (sharded by parallel's plan) and its math

A lower package importing a higher one (models importing the runner, say) is reported,
wherever in the module the import sits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE = REPO_ROOT / "server" / "engine"
WEB_STACK = frozenset({"fastapi", "pydantic", "uvicorn", "starlette", "server.api"})
# package -> the engine packages it must not import
HIGHER = {
    "models": ("step", "service", "loading", "gpu", "core", "llm"),
    "ops": ("step", "service", "loading", "core", "llm"),
    "attention": ("step", "service", "loading", "core", "llm"),
    "gpu": ("step", "service", "core", "llm"),
    "parallel": ("step", "service", "loading", "gpu", "core", "llm"),
    "loading": ("step", "service", "core", "llm"),
    "step": ("service", "core", "llm"),
}


def imported_modules(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def engine_modules() -> list[Path]:
    files = sorted(ENGINE.rglob("*.py"))
    assert len(files) > 40, "the engine's modules were not found"
    return files


def violations(path: Path) -> list[str]:
    package = path.relative_to(ENGINE).parts[0].removesuffix(".py")
    found = []
    for name in imported_modules(path.read_text()):
        if name.split(".")[0] in WEB_STACK or name.startswith("server.api"):
            found.append(f"web stack: {name}")
        for higher in HIGHER.get(package, ()):
            if name == f"server.engine.{higher}" or name.startswith(f"server.engine.{higher}."):
                found.append(f"{package} imports {name}")
    return found


@pytest.mark.parametrize("path", engine_modules(), ids=lambda p: p.relative_to(ENGINE).as_posix())
def test_engine_module_imports_downward_and_no_web_stack(path):
    assert violations(path) == []


@pytest.mark.parametrize("source,package", [
    ("from server.engine.step.runner import ModelRunner", "models"),
    ("def later():\n    from server.engine.service import client\n", "step"),
    ("import fastapi", "gpu"),
    ("from server.api.errors import APIError", "loading"),
])
def test_the_layer_check_catches_an_upward_or_web_import(tmp_path, source, package):
    path = tmp_path / "server" / "engine" / package / "probe.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    global ENGINE
    saved, ENGINE = ENGINE, tmp_path / "server" / "engine"
    try:
        assert violations(path) != []
    finally:
        ENGINE = saved
