"""deploy/examples/inference-gateway: inflightd replicas behind the Gateway API Inference
Extension. It renders; every object validates (built-in kinds strictly, the InferencePool
against the extension's vendored CRD, the endpoint picker's configuration against its own
schema); and the parts point at each other and at metrics the daemon really serves."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.api.metrics import ServerMetrics
from server.engine.service.info import EngineInfo, EngineStats
from tests.deploy.crd_schema import crd_schema
from tests.deploy.epp_config_schema import ENDPOINT_PICKER_CONFIG_SCHEMA, plugin_names
from tests.deploy.manifests import (KUBERNETES_VERSIONS, Manifest, container_port, flag_value,
                                   render, selects)
from tests.deploy.podmonitor_schema import PODMONITOR_SCHEMA

EXAMPLE = "examples/inference-gateway"
POOL_API, POOL_KIND, POOL_SCHEMA = crd_schema("inference.networking.k8s.io_inferencepools.yaml",
                                              version="v1")
CUSTOM_SCHEMAS = {(POOL_API, POOL_KIND): POOL_SCHEMA,
                  ("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR_SCHEMA}
CONFIG_FILE = "endpoint-picker-config.yaml"


@pytest.fixture(scope="module")
def manifests(kubectl: str) -> list[Manifest]:
    return render(kubectl, EXAMPLE)


def named(manifests: list[Manifest], *, kind: str, name: str) -> Manifest:
    [match] = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return match


def picker_config(manifests: list[Manifest]) -> dict[str, Any]:
    [config_map] = [m for m in manifests if m["kind"] == "ConfigMap"]
    return yaml.safe_load(config_map["data"][CONFIG_FILE])


def container(deployment: Manifest, name: str) -> dict[str, Any]:
    [found] = [c for c in deployment["spec"]["template"]["spec"]["containers"]
               if c["name"] == name]
    return found


def vllm_series_the_daemon_serves() -> set[str]:
    """The metric families /metrics has with --metrics-compat vllm (rendered by the
    daemon's own code from engine figures)."""
    stats = EngineStats(num_running=1, num_waiting=2, num_free_blocks=10, num_blocks=16,
                        num_evictable_blocks=0, num_used_blocks=6, kv_cache_usage=0.375,
                        prefix_cache_queries=0, prefix_cache_hits=0, num_preemptions=0,
                        prompt_tokens_total=0, generation_tokens_total=0)
    info = EngineInfo(model_name="m", vocab_size=10, max_model_len=64, eos_token_ids=(0,),
                      num_kv_blocks=16, block_size=16, kv_cache_tokens=256,
                      tokenizer_dir=None, device="cpu", dtype="float32")
    metrics = ServerMetrics(model_name="m", latest_stats=lambda: stats, compat="vllm",
                            engine_info=lambda: info)
    families = text_string_to_metric_families(metrics.render().decode())
    return {family.name for family in families if family.name.startswith("vllm:")}


def test_the_example_renders_replicas_a_pool_and_its_endpoint_picker(manifests):
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in manifests)
    assert ("InferencePool", "inflightd") in kinds
    assert ("Deployment", "inflightd") in kinds and ("Deployment", "inflightd-epp") in kinds
    assert {"Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
            "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "PodMonitor"} <= {kind for kind, _ in kinds}
    assert named(manifests, kind="HorizontalPodAutoscaler", name="inflightd")["spec"][
        "minReplicas"] >= 2


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_its_schema(manifests, kubernetes_version):
    for manifest in manifests:
        custom = CUSTOM_SCHEMAS.get((manifest["apiVersion"], manifest["kind"]))
        if custom is not None:
            jsonschema.Draft202012Validator(custom).validate(manifest)
        else:
            kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
    jsonschema.Draft202012Validator(ENDPOINT_PICKER_CONFIG_SCHEMA).validate(
        picker_config(manifests))


def test_the_pool_schema_rejects_a_misspelt_field(manifests):
    pool = copy.deepcopy(named(manifests, kind="InferencePool", name="inflightd"))
    pool["spec"]["targetPort"] = pool["spec"].pop("targetPorts")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(POOL_SCHEMA).validate(pool)


@pytest.mark.parametrize("break_it", [
    lambda c: c["plugins"][1]["parameters"]["engineConfigs"][0].update(kvUsage="x"),
    lambda c: c["plugins"].append({"type": "queue-scorrer"}),
    lambda c: c["plugins"][0]["parameters"].update(scheme="tcp"),
])
def test_the_picker_schema_rejects_misspelt_names_and_values(manifests, break_it):
    config = picker_config(manifests)
    break_it(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(ENDPOINT_PICKER_CONFIG_SCHEMA).validate(config)


def test_the_pool_selects_the_daemon_pods_on_the_daemon_port_and_not_the_picker(manifests):
    pool = named(manifests, kind="InferencePool", name="inflightd")["spec"]
    daemon = named(manifests, kind="Deployment", name="inflightd")
    picker = named(manifests, kind="Deployment", name="inflightd-epp")
    assert selects(pool["selector"], daemon["spec"]["template"]["metadata"]["labels"])
    assert not selects(pool["selector"], picker["spec"]["template"]["metadata"]["labels"])
    port = int(flag_value(container(daemon, "inflightd")["args"], flag="--port"))
    assert [p["number"] for p in pool["targetPorts"]] == [port]


def test_the_pool_points_at_the_pickers_grpc_port_and_the_picker_at_the_pool(manifests):
    pool = named(manifests, kind="InferencePool", name="inflightd")
    ref = pool["spec"]["endpointPickerRef"]
    service = named(manifests, kind="Service", name=ref["name"])
    # the CRD's CEL rule: a Service reference needs a port (checked here, not by the schema)
    [service_port] = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    assert service_port["appProtocol"] == "kubernetes.io/h2c"
    picker = named(manifests, kind="Deployment", name="inflightd-epp")
    assert selects({"matchLabels": service["spec"]["selector"]},
                   picker["spec"]["template"]["metadata"]["labels"])
    epp = container(picker, "epp")
    assert container_port(epp, port=service_port["targetPort"]) == int(
        flag_value(epp["args"], flag="--grpc-port"))
    assert flag_value(epp["args"], flag="--pool-name") == pool["metadata"]["name"]
    assert flag_value(epp["args"], flag="--pool-group") == POOL_API.split("/")[0]


def test_the_picker_reads_its_configuration_from_the_generated_config_map(manifests):
    picker = named(manifests, kind="Deployment", name="inflightd-epp")
    [config_map] = [m for m in manifests if m["kind"] == "ConfigMap"]
    [volume] = picker["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    [mount] = container(picker, "epp")["volumeMounts"]
    assert mount["name"] == volume["name"]
    path = flag_value(container(picker, "epp")["args"], flag="--config-file")
    assert path == f"{mount['mountPath']}/{CONFIG_FILE}"


def test_the_picker_reads_metrics_the_daemon_serves_with_metrics_compat(manifests):
    config = picker_config(manifests)
    [extractor] = [p for p in config["plugins"] if p["type"] == "core-metrics-extractor"]
    params = extractor["parameters"]
    daemon = named(manifests, kind="Deployment", name="inflightd")
    engine = daemon["spec"]["template"]["metadata"]["labels"][params["engineLabelKey"]]
    [engine_config] = [e for e in params["engineConfigs"] if e["name"] == engine]
    assert flag_value(container(daemon, "inflightd")["args"],
                      flag="--metrics-compat") == "vllm"
    named_series = {engine_config[key].split("{")[0] for key in (
        "queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "cacheInfoSpec")}
    assert named_series <= vllm_series_the_daemon_serves()
    assert engine_config["loraSpec"] == ""  # the daemon has no LoRA series to read


def test_every_plugin_the_picker_refers_to_is_declared(manifests):
    config = picker_config(manifests)
    declared = plugin_names(config)
    refs = [p["pluginRef"] for profile in config["schedulingProfiles"]
            for p in profile["plugins"]]
    for source in config["dataLayer"]["sources"]:
        refs += [source["pluginRef"]] + [e["pluginRef"] for e in source["extractors"]]
    assert refs and set(refs) <= declared


def test_the_daemon_parses_the_examples_arguments(manifests):
    from server.cli import build_parser, serve_config

    args = container(named(manifests, kind="Deployment", name="inflightd"), "inflightd")["args"]
    config = serve_config(build_parser(args).parse_args(args))
    assert config.api.metrics_compat == "vllm"
    assert config.api.port == 8000
