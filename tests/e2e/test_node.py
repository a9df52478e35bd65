"""The e2e node itself: it goes Ready, runs a pod from an imported image, routes a ClusterIP Service from the
host, lets pods reach each other, mounts working ServiceAccount tokens, has no cluster DNS, and leaves
nothing behind when torn down."""

from __future__ import annotations

import ipaddress
import urllib.request
import uuid
from typing import Any

import pytest
from duplex_controlplane import SERVICE_CIDR, wait_until
from duplex_node import NODE_NAME, NodeCluster
from node_host import NODE_IP, POD_CIDR
from node_images import BUSYBOX_IMAGE, PAUSE_IMAGE

BENCHMARKING = ipaddress.IPv4Network("198.18.0.0/15")
HTTPD_PORT = 8080
# urllib would honour an http_proxy from the environment; node addresses are only reachable directly
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str) -> str:
    with DIRECT.open(url, timeout=3) as r:
        body: bytes = r.read()
        return body.decode()


def busybox_pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",  # imported into containerd; there is no registry
                    "command": ["/bin/sh", "-c", script],
                    **spec.pop("container", {}),
                }
            ],
            "terminationGracePeriodSeconds": 1,
            **spec,
        },
    }


@pytest.fixture(scope="module")
def namespace(node: NodeCluster) -> str:
    name = f"node-{uuid.uuid4().hex[:6]}"
    node.create_namespace(name)
    return name


def pod_condition(node: NodeCluster, namespace: str, name: str, condition: str) -> bool:
    node.check_alive()
    pod = node.kube().get("v1", "Pod", namespace, name) or {}
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == condition and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def web(node: NodeCluster, namespace: str) -> dict[str, Any]:
    """busybox httpd serving its own pod name, Ready through an HTTP readiness probe (the kubelet's)."""
    kube = node.kube()
    script = f"mkdir /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p {HTTPD_PORT} -h /www"
    probe = {"httpGet": {"path": "/", "port": HTTPD_PORT}, "periodSeconds": 1}
    kube.create(busybox_pod("web", script, container={"readinessProbe": probe}), namespace)
    wait_until(lambda: pod_condition(node, namespace, "web", "Ready"), 90, "pod web Ready", interval=0.5)
    pod: dict[str, Any] | None = kube.get("v1", "Pod", namespace, "web")
    assert pod is not None
    return pod


@pytest.fixture(scope="module")
def web_service(node: NodeCluster, namespace: str, web: dict[str, Any]) -> dict[str, Any]:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": HTTPD_PORT}]},
    }
    created: dict[str, Any] = node.kube().create(svc, namespace)
    return created


def test_node_is_ready_on_the_benchmarking_range(node: NodeCluster) -> None:
    n = node.kube().get("v1", "Node", "", NODE_NAME)
    assert n is not None
    assert {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"] == "True"
    addresses = {a["type"]: a["address"] for a in n["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP
    assert n["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"
    assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    for net in (NODE_IP, POD_CIDR, SERVICE_CIDR):
        assert ipaddress.IPv4Network(net).subnet_of(BENCHMARKING)
    assert node.plane.server.startswith(f"https://{NODE_IP}:")
    assert {"images", "controllers", "containerd", "node ready", "total"} <= set(node.timings)


def test_pod_from_an_imported_image_serves_http(node: NodeCluster, web: dict[str, Any]) -> None:
    assert web["spec"]["nodeName"] == NODE_NAME
    pod_ip = web["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(POD_CIDR)
    assert http_get(f"http://{pod_ip}:{HTTPD_PORT}/").strip() == "served-by-web"
    images = node.ctr("images", "ls", "-q").split()
    assert BUSYBOX_IMAGE in images and PAUSE_IMAGE in images


def test_cluster_ip_service_routes_from_the_host(web_service: dict[str, Any]) -> None:
    ip = web_service["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SERVICE_CIDR)
    answers: list[str] = []

    def routed() -> bool:  # kube-proxy writes the rules once it has seen the Service and its endpoints
        answers.append(http_get(f"http://{ip}/").strip())
        return True

    wait_until(routed, 30, f"kube-proxy routing {ip}:80", interval=0.2)
    assert answers[-1] == "served-by-web"


def test_pods_reach_each_other_and_services_with_tokens_and_no_dns(
    node: NodeCluster, namespace: str, web: dict[str, Any], web_service: dict[str, Any]
) -> None:
    """One client pod: another pod by IP, the Service by ClusterIP (pod → service → pod on one bridge needs
    bridge netfilter), its ServiceAccount token, its resolv.conf."""
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    script = "; ".join(
        [
            f"echo pod=$(wget -qO- http://{web['status']['podIP']}:{HTTPD_PORT}/)",
            # kube-proxy may need a moment for a new Service: retry within the pod
            f"svc=http://{web_service['spec']['clusterIP']}/",
            # (not wget -T: it segfaults in Debian's busybox 1.35)
            "for i in $(seq 50); do s=$(timeout 1 wget -qO- $svc) && break; sleep 0.2; done",
            "echo service=$s",
            f"echo token=$(cat {sa}/token)",
            "echo resolvconf=$(tr '\\n' ';' < /etc/resolv.conf)",
            "echo resolve=$(nslookup web >/dev/null 2>&1 && echo yes || echo no)",
        ]
    )
    kube = node.kube()
    kube.create(busybox_pod("client", script, restartPolicy="Never"), namespace)
    core = node.core()

    def finished() -> bool:
        node.check_alive()
        pod = kube.get("v1", "Pod", namespace, "client") or {}
        phase = pod.get("status", {}).get("phase")
        assert phase != "Failed", core.read_namespaced_pod_log("client", namespace)
        return bool(phase == "Succeeded")

    wait_until(finished, 90, "pod client Succeeded", interval=0.5)
    # the log comes through the apiserver from the kubelet on the node IP
    log: str = core.read_namespaced_pod_log("client", namespace)
    out = dict(line.split("=", 1) for line in log.splitlines() if "=" in line)
    assert out["pod"] == "served-by-web"
    assert out["service"] == "served-by-web"
    assert "nameserver" not in out["resolvconf"], out["resolvconf"]  # no cluster DNS here, by design
    assert out["resolve"] == "no"

    review = kube.create(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": out["token"]}}
    )
    assert review["status"]["authenticated"] is True
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{namespace}:default"


@pytest.mark.node_teardown
def test_teardown_leaves_nothing(node: NodeCluster, web: dict[str, Any]) -> None:
    """Stopping the node ends every process (daemons, shims, pods), unmounts, removes the KUBE-*/CNI-*
    chains, the bridge, the cgroups and the directories."""
    assert any("pause" in p for p in node.leftovers())  # running pods are seen before the teardown
    node.stop()
    assert node.leftovers() == []
