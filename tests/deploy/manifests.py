"""Rendering deploy/ with kustomize and reading the parts of the result the tests check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
# `labels:` with includeTemplates, which deploy/base uses, arrived in kustomize v4.5.
MIN_KUSTOMIZE_VERSION = (4, 5)

Manifest = dict[str, Any]
# The oldest Kubernetes release deploy/ supports (deploy/README.md says so), and the
# newest that kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())


class KubectlMissingError(RuntimeError):
    """No kubectl that can render deploy/ was found."""


def kustomization_dirs() -> list[str]:
    """The base and every overlay, relative to deploy/ (a new overlay is picked up)."""
    overlays = sorted(p.parent for p in (DEPLOY_DIR / "overlays").glob("*/kustomization.yaml"))
    return ["base"] + [str(p.relative_to(DEPLOY_DIR)) for p in overlays]


def find_kubectl() -> str:
    """kubectl beside this interpreter (the PyPI wheel) first, then on PATH; it must carry
    a kustomize that reads the `patches:` and `labels:` fields deploy/ uses."""
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    kubectl = shutil.which("kubectl", path=search_path)
    if kubectl is None:
        raise KubectlMissingError("kubectl not found: run scripts/setup-system.sh")
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True,
                             text=True, timeout=30).stdout
    match = re.search(r"^Kustomize Version: v(\d+)\.(\d+)", version, re.MULTILINE)
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_KUSTOMIZE_VERSION:
        wanted = ".".join(map(str, MIN_KUSTOMIZE_VERSION))
        raise KubectlMissingError(
            f"{kubectl} has no kustomize v{wanted}+ ({version.strip()!r}): "
            "run scripts/setup-system.sh")
    return kubectl


def render(kubectl: str, kustomization: str) -> list[Manifest]:
    """`kubectl kustomize deploy/<kustomization>`, parsed into one dict per object."""
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY_DIR / kustomization)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"kustomize failed for {kustomization}:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def only(manifests: list[Manifest], *, kind: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def server_container(manifests: list[Manifest]) -> dict[str, Any]:
    containers = only(manifests, kind="Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["inflightd"]
    return containers[0]


def flag_value(args: list[str], *, flag: str) -> str:
    """The value after `flag` in a container's args (`--port 8000` or `--port=8000`)."""
    for index, arg in enumerate(args):
        if arg == flag:
            assert index + 1 < len(args), f"{flag} has no value in {args}"
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in container args {args}")


def container_port(container: dict[str, Any], *, port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container's number."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container["ports"]], port
        return port
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in by_name, f"port name {port!r} is not one of the container's {by_name}"
    return by_name[port]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a matchLabels-only selector matches the labels."""
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is handled: {selector}"
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())
