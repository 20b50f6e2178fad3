"""The rendered objects point at each other and at the daemon consistently: ports, paths,
selectors, shutdown timing, the autoscaler's metric, and the accelerator per overlay."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    DEPLOY_DIR,
    Manifest,
    container_port,
    flag_value,
    kustomization_dirs,
    only,
    selects,
    server_container,
)

KUSTOMIZATIONS = kustomization_dirs()
DAEMON_QUEUE_METRIC = "inflightd:num_requests_waiting"
# Seconds the engine process gets, after the drain, to exit and free the GPU.
MIN_SHUTDOWN_MARGIN_S = 10
# Loading and converting a model on first start can take minutes.
MIN_STARTUP_BUDGET_S = 300


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    return only(manifests, kind="Deployment")["spec"]["template"]["spec"]


def pod_labels(manifests: list[Manifest]) -> dict[str, str]:
    return only(manifests, kind="Deployment")["spec"]["template"]["metadata"]["labels"]


def served_port(manifests: list[Manifest]) -> int:
    return int(flag_value(server_container(manifests)["args"], flag="--port"))


def seconds(duration: str) -> int:
    """A Prometheus duration made of minutes and seconds, e.g. 1m30s."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"unsupported duration {duration!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_hit_the_daemon_endpoints_on_the_served_port(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[kustomization]
    container = server_container(manifests)
    expected_paths = {"startupProbe": "/health", "livenessProbe": "/health",
                      "readinessProbe": "/ready"}
    for probe_name, path in expected_paths.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert container_port(container, port=probe["port"]) == served_port(manifests)
    assert flag_value(container["args"], flag="--host") == "0.0.0.0"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_service_routes_to_the_served_port_of_the_server_pods(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[kustomization]
    service = only(manifests, kind="Service")["spec"]
    assert selects({"matchLabels": service["selector"]}, pod_labels(manifests))
    [port] = service["ports"]
    target = container_port(server_container(manifests), port=port["targetPort"])
    assert target == served_port(manifests)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_podmonitor_scrapes_metrics_from_the_server_pods(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[kustomization]
    spec = only(manifests, kind="PodMonitor")["spec"]
    assert selects(spec["selector"], pod_labels(manifests))
    [endpoint] = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert container_port(server_container(manifests), port=endpoint["port"]) == \
        served_port(manifests)
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_disruption_budget_covers_the_server_pods_and_allows_drains(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[kustomization]
    spec = only(manifests, kind="PodDisruptionBudget")["spec"]
    assert selects(spec["selector"], pod_labels(manifests))
    # minAvailable would block every drain while the autoscaler runs one replica.
    assert "minAvailable" not in spec and spec["maxUnavailable"] >= 1


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_autoscaler_owns_the_replica_count_of_the_deployment(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[kustomization]
    deployment = only(manifests, kind="Deployment")
    spec = only(manifests, kind="HorizontalPodAutoscaler")["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": deployment["apiVersion"],
                                      "kind": "Deployment",
                                      "name": deployment["metadata"]["name"]}
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    # A fixed count in the Deployment would undo the autoscaler on every apply.
    assert "replicas" not in deployment["spec"]


def adapter_rule() -> dict[str, Any]:
    """The prometheus-adapter rule documented in deploy/README.md."""
    readme = (DEPLOY_DIR / "README.md").read_text()
    blocks = [yaml.safe_load(block)
              for block in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)]
    rules = [rule for block in blocks if isinstance(block, dict)
             for rule in block.get("rules", [])]
    assert len(rules) == 1, "deploy/README.md should document exactly one adapter rule"
    return rules[0]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_queue_metric_is_the_adapter_name_of_the_daemon_metric(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    rule = adapter_rule()
    assert rule["seriesQuery"].startswith(DAEMON_QUEUE_METRIC + "{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # The adapter's `as` uses Go's ${1}; Python's re spells it \g<1>.
    renamed = re.sub(rule["name"]["matches"],
                     re.sub(r"\$\{(\d+)\}", r"\\g<\1>", rule["name"]["as"]),
                     DAEMON_QUEUE_METRIC)
    metrics = only(rendered[kustomization], kind="HorizontalPodAutoscaler")["spec"]["metrics"]
    pods_metrics = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert [m["metric"]["name"] for m in pods_metrics] == [renamed]
    assert ":" not in renamed
    assert pods_metrics[0]["target"]["type"] == "AverageValue"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_cpu_fallback_metric_has_a_cpu_request_to_measure_against(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[kustomization]
    metrics = only(manifests, kind="HorizontalPodAutoscaler")["spec"]["metrics"]
    [cpu] = [m["resource"] for m in metrics if m["type"] == "Resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert 0 < cpu["target"]["averageUtilization"] <= 100
    # Utilisation is measured against the request: without one the metric is unusable.
    for container in pod_spec(manifests)["containers"]:
        assert "cpu" in container["resources"]["requests"], container["name"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_grace_period_covers_the_prestop_sleep_and_the_drain(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[kustomization]
    container = server_container(manifests)
    shutdown_timeout = int(flag_value(container["args"], flag="--shutdown-timeout"))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and len(pre_stop) == 2
    pre_stop_sleep = int(pre_stop[1])
    # Long enough for endpoint removal to propagate, short next to the drain itself.
    assert 1 <= pre_stop_sleep < shutdown_timeout
    grace = pod_spec(manifests)["terminationGracePeriodSeconds"]
    assert grace >= pre_stop_sleep + shutdown_timeout + MIN_SHUTDOWN_MARGIN_S


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_startup_probe_gives_the_model_minutes_to_load(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    probe = server_container(rendered[kustomization])["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= MIN_STARTUP_BUDGET_S


def gpu_counts(manifests: list[Manifest]) -> dict[str, Any]:
    resources = server_container(manifests)["resources"]
    return {section: resources.get(section, {}).get("nvidia.com/gpu")
            for section in ("requests", "limits")}


def test_gpu_overlay_requests_one_gpu_and_tolerates_gpu_nodes(
        rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["overlays/gpu"]
    # Extended resources are granted through limits; a request must equal the limit.
    assert gpu_counts(manifests) == {"requests": 1, "limits": 1}
    tolerations = pod_spec(manifests).get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
               for t in tolerations)
    assert not server_container(manifests)["image"].endswith("-cpu")


@pytest.mark.parametrize("kustomization", ["base", "overlays/cpu"])
def test_cpu_deployments_request_no_gpu(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[kustomization]
    assert gpu_counts(manifests) == {"requests": None, "limits": None}
    assert not any(t.get("key") == "nvidia.com/gpu"
                   for t in pod_spec(manifests).get("tolerations", []))


def test_cpu_overlay_runs_the_cpu_image(rendered: dict[str, list[Manifest]]) -> None:
    assert server_container(rendered["overlays/cpu"])["image"].endswith("-cpu")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pod_runs_as_non_root_on_a_read_only_root_filesystem(
        kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    spec = pod_spec(rendered[kustomization])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    context = server_container(rendered[kustomization])["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    # Every mounted volume is declared, and /tmp is writable.
    declared = {volume["name"] for volume in spec["volumes"]}
    mounts = server_container(rendered[kustomization])["volumeMounts"]
    assert {m["name"] for m in mounts} <= declared
    assert "/tmp" in {m["mountPath"] for m in mounts}
