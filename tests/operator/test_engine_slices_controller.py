"""The real EndpointSlice controller between the operator's leader Service and the session picker: the
controller copies the leader label onto the slices it writes for the rendered Service, and the picker's watch
and Envoy's endpoint file follow rank 0's pod as the kubelet reports it (ready, unready, terminating, gone).

Its own control plane runs the workload controllers plus ``endpointslice``, with the
``EndpointSliceTerminatingCondition`` gate on: Kubernetes 1.20 reports the ``serving`` and ``terminating``
conditions only behind it (beta and on by default from 1.22). No kubelet or scheduler runs: the pod names its
Node (a real Node object, which the controller reads) and its status is written through the status
subresource, as a kubelet writes it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from duplex_controlplane import CONTROLLERS, ControlPlane, control_plane
from test_engine_watch import Front, eventually, following, slice_api

from duplex.operator.kube import Kube, load_api_client
from duplex.operator.naming import LEADER_LABEL, ModelRef
from duplex.operator.render import render_children
from duplex.operator.resolve import parse_spec, resolve

GATES = "EndpointSliceTerminatingCondition=true"
NAMESPACE = "engines"
NODE = "node-a"
ENGINE_PORT = 7443  # not the default (7070): the listed port is the one the spec names
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslice-controller.k8s.io"


@pytest.fixture(scope="module")
def slices_cluster() -> Iterator[ControlPlane]:
    with control_plane(controllers=f"{CONTROLLERS},endpointslice", feature_gates=GATES) as cp:
        yield cp


def rendered(ref: ModelRef, kube: Kube) -> dict[str, dict[str, Any]]:
    """The operator's children of a one-replica DuplexModel: the leader Service, the headless Service and the
    StatefulSet, by role."""
    children = render_children(ref, resolve(parse_spec({"engine": {"port": ENGINE_PORT}})), kube.api_versions())
    services = [c for c in children if c["kind"] == "Service" and c["metadata"]["name"].startswith(ref.engine(0))]
    [leader] = [s for s in services if s["metadata"]["labels"].get(LEADER_LABEL) == "true"]
    [headless] = [s for s in services if s["spec"].get("clusterIP") == "None"]
    [statefulset] = [c for c in children if c["kind"] == "StatefulSet"]
    return {"leader": leader, "headless": headless, "statefulset": statefulset}


def rank0_pod(statefulset: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's pod as the StatefulSet controller makes it from the rendered template (its name and the
    ``pod-name`` label the leader Service selects), bound to the Node as a scheduler would bind it."""
    name = f"{statefulset['metadata']['name']}-0"
    template = statefulset["spec"]["template"]
    labels = {**template["metadata"]["labels"], "statefulset.kubernetes.io/pod-name": name}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": template["metadata"].get("annotations", {})},
        "spec": {**template["spec"], "nodeName": NODE},
    }


def report(kube: Kube, name: str, ip: str, ready: bool) -> None:
    """What the kubelet writes for the running engine pod: its IP, phase Running and its readiness."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    state = "True" if ready else "False"
    conditions = [("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", state), ("Ready", state)]
    status = {
        "phase": "Running",
        "startTime": now,
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": t, "status": s, "lastTransitionTime": now} for t, s in conditions],
    }
    kube.patch("v1", "Pod", NAMESPACE, name, {"status": status}, subresource="status")


def slices(kube: Kube, selector: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kube.list_objects(slice_api(kube), "EndpointSlice", NAMESPACE, selector)
    return found


def endpoints(kube: Kube, service: str) -> list[dict[str, Any]]:
    """Every endpoint the controller lists for ``service`` (all its slices)."""
    return [e for s in slices(kube, f"{SERVICE_NAME_LABEL}={service}") for e in s.get("endpoints") or []]


def conditions_of(kube: Kube, service: str) -> list[dict[str, Any]]:
    return [e["conditions"] for e in endpoints(kube, service)]


async def test_the_endpointslice_controller_labels_the_leader_slices_and_the_picker_follows_the_pod(
    slices_cluster: ControlPlane, tmp_path: Path
) -> None:
    kube = Kube(load_api_client(str(slices_cluster.kubeconfig)))
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    ref = ModelRef("m", NAMESPACE, "")
    children = rendered(ref, kube)
    leader, headless = children["leader"], children["headless"]
    kube.create(leader, NAMESPACE)
    kube.create(headless, NAMESPACE)  # selects the same pod; its slices are not the picker's
    pod = rank0_pod(children["statefulset"])
    name = pod["metadata"]["name"]
    kube.create(pod, NAMESPACE)

    front = Front(ref, tmp_path / "engines.json")
    async with following(front, load_api_client(str(slices_cluster.kubeconfig))):
        await eventually(lambda: front.follows([]), what="the first list: no pod address yet")

        # the kubelet reports the engine running and ready: the controller lists it on the leader's slice
        first = "127.0.0.2"
        report(kube, name, first, ready=True)
        await eventually(lambda: front.follows([f"{first}:{ENGINE_PORT}"]), what="the controller's endpoint")
        # the controller may write the Service's endpoints over more than one slice (a duplicate it writes from
        # a stale cache is removed later): every slice the leader selector picks is the leader Service's
        leader_slices = slices(kube, ref.leader_selector)  # the headless Service's slices are not selected
        assert leader_slices
        for leader_slice in leader_slices:
            assert leader_slice["metadata"]["labels"] == {
                **leader["metadata"]["labels"],
                SERVICE_NAME_LABEL: leader["metadata"]["name"],
                MANAGED_BY_LABEL: CONTROLLER,
            }
            grpc_ports = [(p["name"], p["port"]) for p in leader_slice["ports"] if p["name"] == "grpc"]
            assert grpc_ports == [("grpc", ENGINE_PORT)]
        listed = endpoints(kube, leader["metadata"]["name"])
        assert {tuple(e["addresses"]) for e in listed} == {(first,)}
        assert {e["targetRef"]["name"] for e in listed} == {name}
        assert [e["addresses"] for e in endpoints(kube, headless["metadata"]["name"])] == [[first]]

        # not ready: the Service publishes not-ready addresses, so `ready` stays true (all 1.20 and 1.21
        # report) and `serving` turns false; the picker drops it from placement and Envoy's file
        report(kube, name, first, ready=False)
        await eventually(lambda: front.follows([]), what="an unready pod dropped")
        assert conditions_of(kube, leader["metadata"]["name"]) == [
            {"ready": True, "serving": False, "terminating": False}
        ]

        # ready again, then deleted: terminating (the kubelet still stopping it) is dropped at once
        report(kube, name, first, ready=True)
        await eventually(lambda: front.follows([f"{first}:{ENGINE_PORT}"]), what="the pod ready again")
        kube.delete("v1", "Pod", NAMESPACE, name)
        await eventually(lambda: front.follows([]), what="a terminating pod dropped")
        assert conditions_of(kube, leader["metadata"]["name"]) == [
            {"ready": True, "serving": True, "terminating": True}
        ]

        # the kubelet confirms the deletion: the pod and its endpoint are gone
        pods = kube.resource("v1", "Pod")
        kube.dynamic.delete(pods, name=name, namespace=NAMESPACE, body={"gracePeriodSeconds": 0})
        await eventually(lambda: kube.get("v1", "Pod", NAMESPACE, name) is None, what="the pod deleted")
        await eventually(lambda: endpoints(kube, leader["metadata"]["name"]) == [], what="the endpoint removed")

        # rank 0 comes back under the same name at another address: only the new one is listed, the old
        # address stays gone (every earlier event was applied before this one)
        second = "127.0.0.3"
        kube.create(rank0_pod(children["statefulset"]), NAMESPACE)
        report(kube, name, second, ready=True)
        await eventually(lambda: front.follows([f"{second}:{ENGINE_PORT}"]), what="the new pod listed")
        [endpoint] = endpoints(kube, leader["metadata"]["name"])
        assert endpoint["addresses"] == [second]
