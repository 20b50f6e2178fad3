"""deploy/ renders with kustomize, and every object it renders is valid for Kubernetes."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.manifests import KUBERNETES_VERSIONS, Manifest, kustomization_dirs, only
from tests.deploy.podmonitor_schema import PODMONITOR_SCHEMA

BUILT_IN_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
# Custom resources kubernetes-validate has no schema for, each with the schema used instead.
CUSTOM_RESOURCE_SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR_SCHEMA}
KUSTOMIZATIONS = kustomization_dirs()


def validate(manifest: Manifest, *, kubernetes_version: str) -> None:
    """Strict schema validation (unknown fields fail); raises on an invalid object and on
    a kind with no schema, so nothing is skipped silently."""
    custom = CUSTOM_RESOURCE_SCHEMAS.get((manifest["apiVersion"], manifest["kind"]))
    if custom is not None:
        jsonschema.Draft202012Validator(custom).validate(manifest)
        return
    kubernetes_validate.validate(manifest, kubernetes_version, strict=True)


def test_base_and_both_overlays_exist() -> None:
    assert {"base", "overlays/cpu", "overlays/gpu"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders_the_full_set_of_objects(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    kinds = sorted(m["kind"] for m in rendered[kustomization])
    assert kinds == sorted(BUILT_IN_KINDS | {"PodMonitor"})
    assert {m["metadata"]["name"] for m in rendered[kustomization]} == {"inflightd"}


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_object_validates_against_its_schema(
        kustomization: str, kubernetes_version: str,
        rendered: dict[str, list[Manifest]]) -> None:
    for manifest in rendered[kustomization]:
        validate(manifest, kubernetes_version=kubernetes_version)


def test_strict_validation_rejects_a_misspelt_probe(
        rendered: dict[str, list[Manifest]]) -> None:
    deployment = copy.deepcopy(only(rendered["overlays/gpu"], kind="Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, kubernetes_version=KUBERNETES_VERSIONS[0])


def test_podmonitor_schema_rejects_a_malformed_scrape_interval(
        rendered: dict[str, list[Manifest]]) -> None:
    monitor = copy.deepcopy(only(rendered["overlays/gpu"], kind="PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, kubernetes_version=KUBERNETES_VERSIONS[0])


def test_an_unknown_custom_resource_fails_rather_than_being_skipped() -> None:
    probe = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
             "metadata": {"name": "inflightd"}, "spec": {}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(probe, kubernetes_version=KUBERNETES_VERSIONS[0])
