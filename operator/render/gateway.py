"""The public Service (named like the model) in front of the front pods (``front.py``: Envoy and the session
picker) and where the front door's Secrets are mounted."""

from __future__ import annotations

from typing import Any

from ..naming import CONFIG_DIR, ModelRef
from ..spec import DuplexModelSpec
from .common import Manifest

AUTH_DIR = f"{CONFIG_DIR}/auth"
TLS_DIR = f"{CONFIG_DIR}/tls"
CLIENT_CA_DIR = f"{CONFIG_DIR}/client-ca"


def gateway_service(ref: ModelRef, spec: DuplexModelSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(ref.endpoint_service, "front"),
        "spec": {
            "type": spec.gateway.service_type,
            "selector": ref.selector("front"),
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
