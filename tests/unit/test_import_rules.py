"""server/scheduler and server/kvcache (except kv_pool.py, which allocates the KV tensors)
must import neither torch, numpy nor fastapi: the scheduler runs in processes and tests that
have none of them, and stays cheap to import.

Two checks, each with a test showing it really fails:
- every module's source is parsed, and any import of a forbidden package (at top level,
  inside a function, or through importlib.import_module / __import__ with a literal name)
  is reported;
- every module is imported in a fresh interpreter, and sys.modules must then hold none of
  the forbidden packages (this catches them arriving through another of our modules).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = frozenset({"torch", "numpy", "fastapi"})
ALLOWED_TO_IMPORT_TORCH = frozenset({"server/kvcache/kv_pool.py"})
CHECKED_PACKAGES = ("server/scheduler", "server/kvcache")


def checked_files() -> list[Path]:
    files = [path for package in CHECKED_PACKAGES
             for path in sorted((REPO_ROOT / package).rglob("*.py"))
             if path.relative_to(REPO_ROOT).as_posix() not in ALLOWED_TO_IMPORT_TORCH]
    assert files, "no modules found: the checked package paths are wrong"
    return files


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def forbidden_imports(source: str) -> list[str]:
    """The forbidden top-level packages this source imports, wherever it does."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = [first.value]
        found += [name for name in names if name.split(".")[0] in FORBIDDEN]
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    return ((isinstance(func, ast.Name) and func.id in ("__import__", "import_module"))
            or (isinstance(func, ast.Attribute) and func.attr == "import_module"))


_PROBE = """
import importlib, json, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in set(sys.argv[1].split(",")))))
"""


def modules_loaded_by_importing(module_names: list[str], *, root: Path) -> list[str]:
    """Import the modules in a fresh interpreter; the forbidden modules it then holds."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(sorted(FORBIDDEN)), *module_names],
        cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_module_source_imports_no_forbidden_package(path):
    assert forbidden_imports(path.read_text()) == []


def test_importing_every_scheduler_and_kvcache_module_loads_no_forbidden_package():
    names = [module_name(path) for path in checked_files()]
    assert "server.scheduler.scheduler" in names and "server.kvcache.block_manager" in names
    assert modules_loaded_by_importing(names, root=REPO_ROOT) == []


@pytest.mark.parametrize("source", [
    "import torch",
    "import numpy as np",
    "from fastapi import FastAPI",
    "import torch.nn.functional as F",
    "import json, numpy.linalg",
    "def later():\n    import torch\n",
    "import importlib\nimportlib.import_module('numpy')",
    "__import__('fastapi.routing')",
])
def test_source_check_catches_forbidden_imports(source):
    assert forbidden_imports(source) != []


@pytest.mark.parametrize("source", [
    "import torchvision_free_name", "from server.kvcache import kv_pool_helpers",
    "import numbers", "from .torch import x",
])
def test_source_check_allows_lookalike_names(source):
    assert forbidden_imports(source) == []


def test_import_check_catches_a_forbidden_package_pulled_in_indirectly(tmp_path):
    package = tmp_path / "probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "clean.py").write_text("from probe_pkg import helper\n")
    (package / "helper.py").write_text("import numpy\n")
    assert modules_loaded_by_importing(["probe_pkg.clean"], root=tmp_path) != []
