"""The front pods: a Deployment whose pod runs Envoy (the public listener: TLS and mutual TLS end here) and the
session picker (Envoy's ``ext_authz`` service on the pod's loopback), sharing an ``emptyDir`` that holds the
engines' endpoint file: the picker writes it from the engine addresses it was given (leader-Service ClusterIPs
expanded by the kubelet, so no cluster DNS), Envoy only reads it. Audio frames go client → Envoy → engine; no
Python process relays them.

With ``gateway.httpPort`` set, Envoy's second listener serves the Realtime endpoint: ``GET /v1/realtime``
upgrades go (after the picker's check) to the engines' WebSocket ports, listed in a second endpoint file the
picker writes as the engines report their ports; client secrets, the page's config and the page come from the
picker's HTTP app on the pod's loopback."""

from __future__ import annotations

from typing import Any

from duplex.serving.picker.cli import PICKER_PORT

from ..naming import CONFIG_DIR, CONFIG_HASH_ANNOTATION, ModelRef
from ..resolve import Resolved
from .common import Manifest, config_volume, env, prometheus_annotations, secret_volume
from .gateway import AUTH_DIR, CLIENT_CA_DIR, TLS_DIR, engine_addresses
from .posture import exec_probe, harden, startup_probe, tcp_probe, tmp_volume

EDS_DIR = "/var/run/duplex/eds"
EDS_PATH = f"{EDS_DIR}/engines.json"
"""The engines' endpoint file (written by the picker, watched by Envoy)."""
REALTIME_EDS_PATH = f"{EDS_DIR}/realtime.json"
"""The engines' Realtime WebSocket endpoint file (written by the picker, watched by Envoy)."""
EDS_SIZE_LIMIT = "16Mi"
PICKER_HTTP_PORT = 9097
"""Loopback port of the picker's HTTP app (client secrets, the page's config, the page) in a front pod."""
PICKER = f"127.0.0.1:{PICKER_PORT}"


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
    mounts = [config_volume(ref.config_map)[1], tmp_volume()[1], _eds_volume(False)[1]]
    if gw.auth_secret:
        mounts.append(secret_volume("auth", gw.auth_secret, AUTH_DIR)[1])
    args = ["picker", "--engines", "$(DUPLEX_ENGINES)", "--config", f"{CONFIG_DIR}/gateway.json"]
    args += ["--eds-path", EDS_PATH, "--port", str(PICKER_PORT), "--bind", "127.0.0.1"]
    if gw.http_port:
        args += ["--http-port", str(PICKER_HTTP_PORT), "--realtime-eds-path", REALTIME_EDS_PATH]
    ports = [{"name": "metrics", "containerPort": gw.metrics_port, "protocol": "TCP"}] if gw.metrics_port else []
    return {
        "name": "picker",
        "image": resolved.spec.engine.image,
        "command": ["duplex"],
        "args": args,
        "env": [env("DUPLEX_ENGINES", engine_addresses(ref, resolved))],  # expanded into --engines by the kubelet
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


def front_deployment(ref: ModelRef, resolved: Resolved, config_digest: str) -> Manifest:
    gw = resolved.spec.gateway
    volumes = [config_volume(ref.config_map)[0], tmp_volume()[0], _eds_volume(False)[0]]
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
            "replicas": gw.replicas,
            "selector": {"matchLabels": ref.selector("front")},
            "template": {
                "metadata": {
                    "labels": ref.labels("front"),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_digest, **prometheus_annotations(gw.metrics_port)},
                },
                "spec": harden({"containers": containers, "volumes": volumes, "enableServiceLinks": True}),
            },
        },
    }
