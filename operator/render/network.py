"""Optional ingress NetworkPolicies (``spec.networkPolicy.enabled``), one per component.

- front (Envoy and the session picker): its public ports (gRPC, and the Realtime HTTP port when set) from
  anywhere (clients, ingress controllers, load balancers);
- engines (every port: gRPC, rendezvous, metrics): only from this model's front pods (Envoy carries every
  conversation) and its engine pods (the ranks of a shard group talk to each other);
- managed Redis and agent workers: only from this model's own pods (``duplex.ai/model=<name>``);
- every metrics port from anywhere, so a Prometheus in any namespace can scrape (narrow it with a site policy
  if the metrics must stay private; NetworkPolicies add up, so a stricter one cannot be expressed by adding).

Egress is left open: engines reach Redis and a model URI, agent tools fetch allowed hosts.
"""

from __future__ import annotations

from typing import Any

from ..naming import COMPONENT_LABEL, MODEL_LABEL, REDIS_PORT, ModelRef
from ..spec import DuplexModelSpec
from .common import Manifest

API_VERSION = "networking.k8s.io/v1"


def _policy(ref: ModelRef, component: str, ingress: list[dict[str, Any]]) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": ref.metadata(ref.network_policy(component), component),
        "spec": {
            "podSelector": {"matchLabels": ref.selector(component)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _from_anywhere(port: int) -> dict[str, Any]:
    return {"ports": [{"protocol": "TCP", "port": port}]}


def _from_own_pods(ref: ModelRef) -> dict[str, Any]:
    """Any port, from pods of this model only (a bare podSelector: the policy's own namespace)."""
    return {"from": [{"podSelector": {"matchLabels": {MODEL_LABEL: ref.name}}}]}


def _from_components(ref: ModelRef, *components: str) -> dict[str, Any]:
    """Any port, from this model's pods of ``components`` only."""
    return {"from": [{"podSelector": {"matchLabels": {MODEL_LABEL: ref.name, COMPONENT_LABEL: c}}} for c in components]}


def network_policies(ref: ModelRef, spec: DuplexModelSpec, managed_redis: bool) -> list[Manifest]:
    front = [_from_anywhere(spec.gateway.port)]
    if spec.gateway.http_port:  # the Realtime WebSocket endpoint and page
        front.append(_from_anywhere(spec.gateway.http_port))
    if spec.gateway.metrics_port:
        front.append(_from_anywhere(spec.gateway.metrics_port))
    engine = [_from_components(ref, "front", "engine")]
    if spec.engine.metrics_port:
        engine.append(_from_anywhere(spec.engine.metrics_port))
    out = [_policy(ref, "front", front), _policy(ref, "engine", engine)]
    if spec.agent.workers > 0:
        agent = [_from_own_pods(ref)]
        if spec.agent.metrics_port:
            agent.append(_from_anywhere(spec.agent.metrics_port))
        out.append(_policy(ref, "agent", agent))
    if managed_redis:
        out.append(_policy(ref, "redis", [{**_from_own_pods(ref), "ports": [{"protocol": "TCP", "port": REDIS_PORT}]}]))
    return out
