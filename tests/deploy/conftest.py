"""Fixtures shared by the deploy tests: deploy/ rendered once per kustomization."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import Manifest, find_kubectl, kustomization_dirs, render


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_kubectl()


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[Manifest]]:
    """Every kustomization under deploy/ (base and overlays) by its path under deploy/."""
    return {name: render(kubectl, name) for name in kustomization_dirs()}
