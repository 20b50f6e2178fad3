"""deploy/examples/multi-node: one model over two nodes as a LeaderWorkerSet. It renders;
the LeaderWorkerSet validates against its vendored CRD (pod templates included) and the
Service strictly; and the parts agree: the daemon parses both pods' arguments (with the
variables the LWS controller sets), their ranks add up to --tensor-parallel-size, the
rendezvous port is the leader's, and HTTP reaches the leader only."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.crd_schema import crd_schema
from tests.deploy.manifests import KUBERNETES_VERSIONS, Manifest, container_port, render

EXAMPLE = "examples/multi-node"
LWS_API, LWS_KIND, LWS_SCHEMA = crd_schema("leaderworkerset.x-k8s.io_leaderworkersets.yaml",
                                           version="v1")


@pytest.fixture(scope="module")
def manifests(kubectl: str) -> list[Manifest]:
    return render(kubectl, EXAMPLE)


def lws(manifests: list[Manifest]) -> Manifest:
    [found] = [m for m in manifests if m["kind"] == LWS_KIND]
    return found


def pod_container(template: dict[str, Any]) -> dict[str, Any]:
    [container] = template["spec"]["containers"]
    return container


def expanded_args(container: dict[str, Any], *, worker_index: int, group_size: int) -> list:
    """The arguments as the kubelet runs them: $(VAR) replaced by the values the LWS
    controller puts in every pod of the group."""
    values = {"LWS_LEADER_ADDRESS": "inflightd-0.inflightd", "LWS_GROUP_SIZE": str(group_size),
              "LWS_WORKER_INDEX": str(worker_index)}
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg)
            for arg in container["args"]]


def parsed(args: list[str]):
    from server.cli import build_parser, serve_config

    parsed_args = build_parser(args).parse_args(args)
    return parsed_args, serve_config(parsed_args)


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_its_schema(manifests, kubernetes_version):
    assert sorted(m["kind"] for m in manifests) == [LWS_KIND, "Service"]
    for manifest in manifests:
        if manifest["kind"] == LWS_KIND:
            jsonschema.Draft202012Validator(LWS_SCHEMA).validate(manifest)
        else:
            kubernetes_validate.validate(manifest, kubernetes_version, strict=True)


def test_the_lws_schema_rejects_a_misspelt_field(manifests):
    broken = copy.deepcopy(lws(manifests))
    broken["spec"]["leaderWorkerTemplate"]["sise"] = broken["spec"][
        "leaderWorkerTemplate"].pop("size")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(LWS_SCHEMA).validate(broken)


def test_leader_and_worker_are_one_tensor_parallel_group(manifests):
    template = lws(manifests)["spec"]["leaderWorkerTemplate"]
    size = template["size"]
    leader = pod_container(template["leaderTemplate"])
    worker = pod_container(template["workerTemplate"])
    leader_args, leader_config = parsed(expanded_args(leader, worker_index=0, group_size=size))
    worker_args, worker_config = parsed(expanded_args(worker, worker_index=1, group_size=size))
    assert not leader_args.headless and worker_args.headless
    for config, node_rank in ((leader_config, 0), (worker_config, 1)):
        model = config.model
        assert (model.nnodes, model.node_rank) == (size, node_rank)
        assert model.master_addr == "inflightd-0.inflightd"
        gpus = int(pod_container(template["leaderTemplate" if node_rank == 0 else
                                          "workerTemplate"])["resources"]["limits"][
                                              "nvidia.com/gpu"])
        assert model.tensor_parallel_size == size * gpus  # each node holds its share
    assert leader_config.model.master_port == worker_config.model.master_port
    assert container_port(leader, port="rendezvous") == leader_config.model.master_port
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"


def test_http_reaches_the_leaders_only(manifests):
    [service] = [m for m in manifests if m["kind"] == "Service"]
    template = lws(manifests)["spec"]["leaderWorkerTemplate"]
    selector = service["spec"]["selector"]

    def selected(pod_template) -> bool:
        labels = pod_template["metadata"]["labels"]
        return all(labels.get(key) == value for key, value in selector.items())

    assert selected(template["leaderTemplate"]) and not selected(template["workerTemplate"])
    leader = pod_container(template["leaderTemplate"])
    assert container_port(leader, port=service["spec"]["ports"][0]["targetPort"]) == 8000
