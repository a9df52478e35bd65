"""The test control plane itself: the versions the operator tests rely on, and loopback-only serving."""

from __future__ import annotations

import json

from duplex_controlplane import SERVICE_CIDR, ControlPlane

from duplex.operator.kube import Kube


def test_serves_kubernetes_1_20_on_loopback(kube_cluster: ControlPlane) -> None:
    code, body = kube_cluster.get("/version")
    assert code == 200
    version = json.loads(body)
    assert (version["major"], version["minor"]) == ("1", "20")
    assert kube_cluster.server.startswith("https://127.0.0.1:")
    assert kube_cluster.get("/readyz")[0] == 200


def test_offers_the_1_20_api_versions(kube: Kube) -> None:
    served = kube.served_group_versions()
    assert "policy/v1beta1" in served and "policy/v1" not in served
    assert "autoscaling/v2beta2" in served and "autoscaling/v2" not in served
    assert "duplex.ai/v1alpha1" in served
    apis = kube.api_versions()  # what the operator renders in, from discovery
    assert (apis.pdb, apis.hpa) == ("policy/v1beta1", "autoscaling/v2beta2")


def test_services_get_addresses_from_the_benchmarking_range(kube: Kube) -> None:
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cp-selftest"}})
    svc = kube.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}},
        },
        "cp-selftest",
    )
    assert SERVICE_CIDR == "198.18.0.0/16" and svc["spec"]["clusterIP"].startswith("198.18.")
