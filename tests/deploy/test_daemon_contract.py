"""What deploy/ and the Dockerfile rely on exists in the daemon: the `serve` flags the
Deployment passes, the probe and scrape endpoints, and the autoscaler's metric."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import REPO_ROOT, Manifest, server_container

SERVER_DIR = REPO_ROOT / "server"
ENDPOINTS = ("/health", "/ready", "/metrics")


def string_constants(*, directory: Path) -> set[str]:
    """Every string literal in the Python modules under `directory`."""
    constants: set[str] = set()
    for module in directory.rglob("*.py"):
        tree = ast.parse(module.read_text(), filename=str(module))
        constants |= {node.value for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return constants


@pytest.fixture(scope="module")
def serve_help() -> str:
    """`inflightd serve --help`, through the console script's entry point."""
    script = "import sys; from server.cli import main; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", script, "serve", "--help"],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_daemon_accepts_every_flag_the_deployments_pass(
        serve_help: str, rendered: dict[str, list[Manifest]]) -> None:
    for kustomization, manifests in rendered.items():
        args = server_container(manifests)["args"]
        assert args[0] == "serve"
        for flag in (arg.split("=", 1)[0] for arg in args if arg.startswith("--")):
            assert flag in serve_help, f"{kustomization} passes {flag}, unknown to serve"


def test_daemon_serves_the_probe_and_scrape_endpoints() -> None:
    constants = string_constants(directory=SERVER_DIR / "api")
    missing = [path for path in ENDPOINTS if path not in constants]
    assert missing == [], f"server/api defines no route for {missing}"


def test_daemon_exports_the_autoscaler_queue_metric() -> None:
    # The name may be written whole or as the `inflightd:` prefix plus the metric.
    constants = string_constants(directory=SERVER_DIR)
    whole = "inflightd:num_requests_waiting" in constants
    split = "num_requests_waiting" in constants and any(
        c.startswith("inflightd:") for c in constants)
    assert whole or split, "server/ exports no inflightd:num_requests_waiting metric"
