"""The operator exposes the Realtime endpoint when ``gateway.httpPort`` is set (and only then)."""

from __future__ import annotations

import json
from typing import Any

from duplex.operator.naming import ModelRef
from duplex.operator.render import ApiVersions, render_children
from duplex.operator.resolve import parse_spec, resolve

REF = ModelRef(name="talk", namespace="prod", uid="0f0e-uid")


def gateway_parts(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    out = render_children(REF, resolve(parse_spec(raw)), ApiVersions())
    dep = next(m for m in out if m["kind"] == "Deployment" and m["metadata"]["name"] == "talk-front")
    svc = next(m for m in out if m["kind"] == "Service" and m["metadata"]["name"] == "talk")
    config = json.loads(next(m for m in out if m["kind"] == "ConfigMap")["data"]["gateway.json"])["gateway"]
    return dep["spec"]["template"]["spec"]["containers"][0], svc, config  # the envoy container


def test_http_port_is_a_container_and_service_port() -> None:
    container, svc, config = gateway_parts({"gateway": {"httpPort": 8081}})
    assert config["http_port"] == 8081
    assert {"name": "http", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert {"name": "http", "port": 8081, "targetPort": "http", "protocol": "TCP"} in svc["spec"]["ports"]
    container, svc, config = gateway_parts({})
    assert config["http_port"] == 0
    assert [p["name"] for p in svc["spec"]["ports"]] == ["grpc"]
    assert "http" not in [p["name"] for p in container["ports"]]
