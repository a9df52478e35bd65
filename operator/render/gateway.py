"""The gateway: a Deployment in front of the engine replicas and the public Service (named like the
model). Engine addresses reach the gateway as leader-Service ClusterIPs, so routing needs no cluster DNS."""

from __future__ import annotations

from typing import Any

from ..naming import CONFIG_DIR, CONFIG_HASH_ANNOTATION, ModelRef, service_host_ref
from ..resolve import Resolved
from ..spec import DuplexModelSpec
from .common import Manifest, config_volume, env, prometheus_annotations, secret_volume
from .posture import exec_probe, harden, startup_probe, tcp_probe, tmp_volume

AUTH_DIR = f"{CONFIG_DIR}/auth"
TLS_DIR = f"{CONFIG_DIR}/tls"
CLIENT_CA_DIR = f"{CONFIG_DIR}/client-ca"


def engine_addresses(ref: ModelRef, resolved: Resolved) -> str:
    """``$(X_SERVICE_HOST):port,...`` for every replica's rank 0."""
    port = resolved.spec.engine.port
    return ",".join(f"{service_host_ref(ref.leader(i))}:{port}" for i in range(resolved.spec.replicas))


def gateway_container(ref: ModelRef, resolved: Resolved) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gw = resolved.spec.gateway
    args = ["gateway", "--engines", "$(DUPLEX_ENGINES)", "--config", f"{CONFIG_DIR}/gateway.json"]
    volumes, mounts = [config_volume(ref.config_map)[0]], [config_volume(ref.config_map)[1]]
    # HOME is /tmp in the image: Python's tempfile and HOME-relative caches need it writable
    volumes.append(tmp_volume()[0])
    mounts.append(tmp_volume()[1])
    if gw.auth_secret:
        v, m = secret_volume("auth", gw.auth_secret, AUTH_DIR)
        volumes.append(v)
        mounts.append(m)
    if gw.tls_secret:  # configmap.py points tls_cert_file / tls_key_file at tls.crt / tls.key here
        v, m = secret_volume("tls", gw.tls_secret, TLS_DIR)
        volumes.append(v)
        mounts.append(m)
    if gw.client_ca_secret:  # mutual TLS: configmap.py points client_ca_file at ca.crt here
        v, m = secret_volume("client-ca", gw.client_ca_secret, CLIENT_CA_DIR)
        volumes.append(v)
        mounts.append(m)
    ports = [{"name": "grpc", "containerPort": gw.port, "protocol": "TCP"}]
    if gw.metrics_port:
        ports.append({"name": "metrics", "containerPort": gw.metrics_port, "protocol": "TCP"})
    if gw.http_port:  # the Realtime WebSocket endpoint and page (docs/realtime.md)
        ports.append({"name": "http", "containerPort": gw.http_port, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "gateway",
        "image": resolved.spec.engine.image,
        "command": ["duplex"],
        "args": args,
        "env": [
            env("DUPLEX_ENGINES", engine_addresses(ref, resolved)),  # expanded into --engines by the kubelet
        ],
        "ports": ports,
        # Alive while it listens (whatever the engines do); ready while some engine replica is healthy, as its
        # gRPC health service says. That service shares the port and its TLS, which the probe cannot verify
        # against an unknown name, so with TLS readiness is the listening port too.
        "startupProbe": startup_probe(tcp_probe("grpc")),  # a slow start is not a hang
        "livenessProbe": tcp_probe("grpc"),
        "readinessProbe": tcp_probe("grpc", period_s=5)
        if gw.tls_secret
        else exec_probe(["grpc-health", f"127.0.0.1:{gw.port}"], period_s=5),
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "volumeMounts": mounts,
    }
    return container, volumes


def gateway_deployment(ref: ModelRef, resolved: Resolved, config_digest: str) -> Manifest:
    container, volumes = gateway_container(ref, resolved)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ref.metadata(ref.gateway, "gateway"),
        "spec": {
            "replicas": resolved.spec.gateway.replicas,
            "selector": {"matchLabels": ref.selector("gateway")},
            "template": {
                "metadata": {
                    "labels": ref.labels("gateway"),
                    "annotations": {
                        CONFIG_HASH_ANNOTATION: config_digest,
                        **prometheus_annotations(resolved.spec.gateway.metrics_port),
                    },
                },
                "spec": harden({"containers": [container], "volumes": volumes, "enableServiceLinks": True}),
            },
        },
    }


def gateway_service(ref: ModelRef, spec: DuplexModelSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(ref.endpoint_service, "gateway"),
        "spec": {
            "type": spec.gateway.service_type,
            "selector": ref.selector("gateway"),
            "ports": [{"name": "grpc", "port": spec.gateway.port, "targetPort": "grpc", "protocol": "TCP"}]
            + (
                [{"name": "http", "port": spec.gateway.http_port, "targetPort": "http", "protocol": "TCP"}]
                if spec.gateway.http_port
                else []
            ),
        },
    }


def endpoint(ref: ModelRef, spec: DuplexModelSpec, service: dict[str, Any] | None = None) -> str:
    """Where clients connect: the load balancer's address once it has one, else the Service's DNS name."""
    port = spec.gateway.port
    if service is not None and spec.gateway.service_type == "LoadBalancer":
        for ingress in (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
            host = ingress.get("hostname") or ingress.get("ip")
            if host:
                return f"{host}:{port}"
    return f"{ref.endpoint_service}.{ref.namespace}.svc:{port}"
