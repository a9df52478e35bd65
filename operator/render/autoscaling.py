"""PodDisruptionBudgets and the HorizontalPodAutoscaler, in whichever API versions the server offers
(Kubernetes 1.20: ``policy/v1beta1``, ``autoscaling/v2beta2``; current: ``policy/v1``, ``autoscaling/v2``;
the choice: :class:`duplex.operator.children.ApiVersions`).

The HPA scales the DuplexModel itself through its scale subresource (``spec.replicas``), so a scale-up
adds whole shard groups. Metric: ``duplex_engine_active_sessions`` (``serving.metrics.ACTIVE_SESSIONS``, a
Pods metric served by a custom-metrics adapter such as prometheus-adapter: docs/operator.md). Rank 0 exports
the replica's live sessions and the other ranks 0, so the average over a replica's pods is sessions / shards:
the target is divided by the shard count accordingly.
"""

from __future__ import annotations

from duplex.serving.metrics import ACTIVE_SESSIONS

from ..children import ApiVersions
from ..naming import API_VERSION, KIND, ModelRef
from ..resolve import Resolved
from .common import Manifest

SESSIONS_METRIC = ACTIVE_SESSIONS


def _pdb(ref: ModelRef, apis: ApiVersions, name: str, component: str, budget: dict[str, int]) -> Manifest:
    return {
        "apiVersion": apis.pdb,
        "kind": "PodDisruptionBudget",
        "metadata": ref.metadata(name, component),
        "spec": {**budget, "selector": {"matchLabels": ref.selector(component)}},
    }


def engine_pdb(ref: ModelRef, apis: ApiVersions) -> Manifest:
    """At most one engine rank down at a time: one voluntary eviction takes out at most one replica."""
    return _pdb(ref, apis, ref.engine_pdb, "engine", {"maxUnavailable": 1})


def front_autoscaled(resolved: Resolved) -> bool:
    """Whether the front Deployment's pods are scaled by an HPA (``gateway.maxReplicas`` above ``replicas``)."""
    gw = resolved.spec.gateway
    return gw.max_replicas > gw.replicas


def wants_front_pdb(resolved: Resolved) -> bool:
    return resolved.spec.gateway.replicas > 1 or front_autoscaled(resolved)


def front_pdb(ref: ModelRef, resolved: Resolved, apis: ApiVersions) -> Manifest:
    """Front pods (Envoy and the picker) through voluntary evictions: at least one stays when there are always
    several; when the autoscaler may run a single one, at most one goes at a time (never blocking a node
    drain). Each evicted pod drains its live conversations first (``duplex envoy`` on SIGTERM)."""
    many = resolved.spec.gateway.replicas > 1
    return _pdb(ref, apis, ref.front_pdb, "front", {"minAvailable": 1} if many else {"maxUnavailable": 1})


def front_hpa(ref: ModelRef, resolved: Resolved, apis: ApiVersions) -> Manifest:
    """The front Deployment between ``gateway.replicas`` and ``gateway.maxReplicas`` pods on average CPU use
    (``gateway.targetCpuPercent`` of the containers' requests; Envoy carries every audio frame)."""
    gw = resolved.spec.gateway
    target = {"type": "Utilization", "averageUtilization": gw.target_cpu_percent}
    return {
        "apiVersion": apis.hpa,
        "kind": "HorizontalPodAutoscaler",
        "metadata": ref.metadata(ref.front_hpa, "front"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ref.front},
            "minReplicas": gw.replicas,
            "maxReplicas": gw.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
        },
    }


def _quantity(value: float) -> str:
    """Canonical form (the API server rewrites ``24000m`` as ``24``; drift checks compare strings)."""
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def hpa(ref: ModelRef, resolved: Resolved, apis: ApiVersions) -> Manifest:
    auto = resolved.spec.autoscaling
    per_pod = auto.target_sessions_per_replica / resolved.shards
    return {
        "apiVersion": apis.hpa,
        "kind": "HorizontalPodAutoscaler",
        "metadata": ref.metadata(ref.hpa, "engine"),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": ref.name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": SESSIONS_METRIC},
                        "target": {"type": "AverageValue", "averageValue": _quantity(per_pod)},
                    },
                }
            ],
        },
    }
