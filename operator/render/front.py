"""The front pods: a Deployment whose pod runs Envoy (the public listener: TLS and mutual TLS end here) and the
session picker (Envoy's ``ext_authz`` service on the pod's loopback), sharing an ``emptyDir`` that holds the
engines' endpoint file: the picker writes it from the EndpointSlices of the model's leader Services, which it
lists and watches through the Kubernetes API (``--engine-selector``; a replica added, scaled away or not
serving is followed at once, no restart), Envoy only reads it. Audio frames go client → Envoy → engine; no
Python process relays them.

The picker alone gets a service-account token (a projected, bound, expiring one, mounted in its container
only), for the front's ServiceAccount, whose Role allows exactly get, list and watch on EndpointSlices in the
model's namespace (:func:`front_rbac`). On SIGTERM ``duplex envoy`` drains (new connections refused, live
conversations carried on for ``gateway.drainGraceS``): the pod's ``terminationGracePeriodSeconds`` covers that
grace.

With ``gateway.httpPort`` set, Envoy's second listener serves the Realtime endpoint: ``GET /v1/realtime``
upgrades go (after the picker's check) to the engines' WebSocket ports, listed in a second endpoint file the
picker writes as the engines report their ports; client secrets, the page's config and the page come from the
picker's HTTP app on the pod's loopback."""

from __future__ import annotations

import math
from typing import Any

from duplex.serving.picker.cli import PICKER_HTTP_PORT, PICKER_PORT

from ..naming import CONFIG_DIR, CONFIG_HASH_ANNOTATION, ModelRef
from ..resolve import Resolved
from .autoscaling import front_autoscaled
from .common import Manifest, config_volume, prometheus_annotations, secret_volume
from .gateway import AUTH_DIR, CLIENT_CA_DIR, TLS_DIR
from .posture import exec_probe, harden, startup_probe, tcp_probe, tmp_volume

EDS_DIR = "/var/run/duplex/eds"
EDS_PATH = f"{EDS_DIR}/engines.json"
"""The engines' endpoint file (written by the picker, watched by Envoy)."""
REALTIME_EDS_PATH = f"{EDS_DIR}/realtime.json"
"""The engines' Realtime WebSocket endpoint file (written by the picker, watched by Envoy)."""
EDS_SIZE_LIMIT = "16Mi"
PICKER = f"127.0.0.1:{PICKER_PORT}"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where the ``kubernetes`` client looks for the in-cluster token, CA and namespace (the picker only)."""
TOKEN_EXPIRY_S = 3600
"""Lifetime of the picker's projected token (the kubelet renews it; the client re-reads the file)."""
GRACE_MARGIN_S = 10
"""Added to ``gateway.drainGraceS`` for the pod's ``terminationGracePeriodSeconds``: Envoy's drain, then its
exit, fit before the kubelet's SIGKILL."""
RBAC_API = "rbac.authorization.k8s.io/v1"
READ_VERBS = ("get", "list", "watch")
"""What the picker does with EndpointSlices (the operator holds these too: RBAC grants only what one holds)."""


def front_rbac(ref: ModelRef) -> tuple[Manifest, Manifest, Manifest]:
    """The front pods' ServiceAccount, and a Role (with its RoleBinding) granting exactly what the picker
    reads: get, list and watch on EndpointSlices in the model's namespace."""
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ref.metadata(ref.front, "front"),
        "automountServiceAccountToken": False,  # the pod projects a bound token into the picker only
    }
    role = {
        "apiVersion": RBAC_API,
        "kind": "Role",
        "metadata": ref.metadata(ref.front, "front"),
        "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": list(READ_VERBS)}],
    }
    binding = {
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": ref.metadata(ref.front, "front"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ref.front},
        "subjects": [{"kind": "ServiceAccount", "name": ref.front, "namespace": ref.namespace}],
    }
    return account, role, binding


def _token_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, mount) of the picker's API credentials: a bound token, the cluster CA, the namespace."""
    volume = {
        "name": "api-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRY_S}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]
        },
    }
    return volume, {"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True}


def _eds_volume(read_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {"name": "eds", "emptyDir": {"sizeLimit": EDS_SIZE_LIMIT}},
        {"name": "eds", "mountPath": EDS_DIR, "readOnly": read_only},
    )


def _loopback_probe(port: int) -> dict[str, Any]:
    """Alive while the process accepts connections on the pod's loopback (a ``tcpSocket`` probe cannot reach it)."""
    return exec_probe(["tcp", f"127.0.0.1:{port}"])


def picker_container(ref: ModelRef, resolved: Resolved) -> dict[str, Any]:
    gw = resolved.spec.gateway
    mounts = [config_volume(ref.config_map)[1], tmp_volume()[1], _eds_volume(False)[1], _token_volume()[1]]
    if gw.auth_secret:
        mounts.append(secret_volume("auth", gw.auth_secret, AUTH_DIR)[1])
    args = ["picker", "--config", f"{CONFIG_DIR}/gateway.json", "--engine-selector", ref.leader_selector]
    args += ["--engine-namespace", ref.namespace]
    args += ["--eds-path", EDS_PATH, "--port", str(PICKER_PORT), "--bind", "127.0.0.1"]
    if gw.http_port:
        args += ["--http-port", str(PICKER_HTTP_PORT), "--realtime-eds-path", REALTIME_EDS_PATH]
    ports = [{"name": "metrics", "containerPort": gw.metrics_port, "protocol": "TCP"}] if gw.metrics_port else []
    return {
        "name": "picker",
        "image": resolved.spec.engine.image,
        "command": ["duplex"],
        "args": args,
        "ports": ports,
        "startupProbe": startup_probe(_loopback_probe(PICKER_PORT)),
        "livenessProbe": _loopback_probe(PICKER_PORT),
        # ready while some engine replica is healthy (its health service, which Envoy also routes)
        "readinessProbe": exec_probe(["grpc-health", PICKER], period_s=5),
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "volumeMounts": mounts,
    }


def envoy_container(ref: ModelRef, resolved: Resolved) -> dict[str, Any]:
    gw = resolved.spec.gateway
    mounts = [config_volume(ref.config_map)[1], tmp_volume()[1], _eds_volume(True)[1]]
    if gw.tls_secret:  # configmap.py points tls_cert_file / tls_key_file at tls.crt / tls.key here
        mounts.append(secret_volume("tls", gw.tls_secret, TLS_DIR)[1])
    if gw.client_ca_secret:  # mutual TLS: configmap.py points client_ca_file at ca.crt here
        mounts.append(secret_volume("client-ca", gw.client_ca_secret, CLIENT_CA_DIR)[1])
    args = ["envoy", "--config", f"{CONFIG_DIR}/gateway.json", "--eds-path", EDS_PATH, "--picker", PICKER]
    args += ["--bootstrap-path", "/tmp/envoy.json"]  # worker threads: gateway.envoy_concurrency
    ports = [{"name": "grpc", "containerPort": gw.port, "protocol": "TCP"}]
    if gw.http_port:  # the Realtime WebSocket endpoint and page (docs/realtime.md)
        args += ["--realtime", f"127.0.0.1:{PICKER_HTTP_PORT}", "--realtime-eds-path", REALTIME_EDS_PATH]
        ports.append({"name": "http", "containerPort": gw.http_port, "protocol": "TCP"})
    return {
        "name": "envoy",
        "image": resolved.spec.engine.image,
        "command": ["duplex"],
        "args": args,
        "ports": ports,
        # Alive while it listens; ready while the picker's health, asked through Envoy's own listener, answers
        # SERVING. With TLS the probe cannot verify the certificate's name (nor present a client certificate):
        # readiness is then the listening port, and the picker's own readiness covers the engines.
        "startupProbe": startup_probe(tcp_probe("grpc")),
        "livenessProbe": tcp_probe("grpc"),
        "readinessProbe": tcp_probe("grpc", period_s=5)
        if gw.tls_secret
        else exec_probe(["grpc-health", f"127.0.0.1:{gw.port}"], period_s=5),
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "volumeMounts": mounts,
    }


def termination_grace_s(resolved: Resolved) -> int:
    """The front pod's ``terminationGracePeriodSeconds``: Envoy's drain grace and a margin for its exit."""
    return math.ceil(resolved.spec.gateway.drain_grace_s) + GRACE_MARGIN_S


def front_deployment(ref: ModelRef, resolved: Resolved, config_digest: str) -> Manifest:
    gw = resolved.spec.gateway
    volumes = [config_volume(ref.config_map)[0], tmp_volume()[0], _eds_volume(False)[0], _token_volume()[0]]
    if gw.auth_secret:
        volumes.append(secret_volume("auth", gw.auth_secret, AUTH_DIR)[0])
    if gw.tls_secret:
        volumes.append(secret_volume("tls", gw.tls_secret, TLS_DIR)[0])
    if gw.client_ca_secret:
        volumes.append(secret_volume("client-ca", gw.client_ca_secret, CLIENT_CA_DIR)[0])
    containers = [envoy_container(ref, resolved), picker_container(ref, resolved)]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ref.metadata(ref.front, "front"),
        "spec": {
            # with gateway.maxReplicas the front HPA owns the count (autoscaling.py): not rendered then
            **({} if front_autoscaled(resolved) else {"replicas": gw.replicas}),
            "selector": {"matchLabels": ref.selector("front")},
            "template": {
                "metadata": {
                    "labels": ref.labels("front"),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_digest, **prometheus_annotations(gw.metrics_port)},
                },
                "spec": harden(
                    {
                        "serviceAccountName": ref.front,
                        "containers": containers,
                        "volumes": volumes,
                        "enableServiceLinks": False,  # nothing reads the Services' variables any more
                        "terminationGracePeriodSeconds": termination_grace_s(resolved),
                    }
                ),
            },
        },
    }
