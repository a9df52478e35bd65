"""Pure render functions: (model identity, resolved spec, API versions) -> Kubernetes manifests.

No I/O here; the handlers apply what these return. Children are returned in apply order: config and
Services before the workloads that read their ``*_SERVICE_HOST`` variables.
"""

from __future__ import annotations

from ..children import ApiVersions
from ..naming import ModelRef
from ..resolve import Resolved
from .agent import agent_deployment
from .autoscaling import engine_pdb, front_autoscaled, front_hpa, front_pdb, hpa, wants_front_pdb
from .common import Manifest
from .configmap import config_hash, engine_config_map
from .engine import engine_headless_service, engine_leader_service, engine_statefulset
from .front import front_deployment, front_rbac
from .gateway import gateway_service
from .network import network_policies
from .redis import redis_deployment, redis_service, wants_managed_redis


def render_children(ref: ModelRef, resolved: Resolved, apis: ApiVersions) -> list[Manifest]:
    """Every child of one DuplexModel, in apply order."""
    spec = resolved.spec
    cm = engine_config_map(ref, resolved)
    digest = config_hash(cm)
    out: list[Manifest] = [cm]
    if wants_managed_redis(spec):
        out.append(redis_service(ref))
    for i in range(spec.replicas):
        out += [engine_headless_service(ref, resolved, i), engine_leader_service(ref, resolved, i)]
    out.append(gateway_service(ref, spec))
    out += front_rbac(ref)  # the picker's ServiceAccount, Role and RoleBinding before its pods
    if wants_managed_redis(spec):
        out.append(redis_deployment(ref, spec))
    out += [engine_statefulset(ref, resolved, i, digest) for i in range(spec.replicas)]
    out.append(front_deployment(ref, resolved, digest))
    if spec.agent.workers > 0:
        out.append(agent_deployment(ref, spec, digest))
    out.append(engine_pdb(ref, apis))
    if wants_front_pdb(resolved):
        out.append(front_pdb(ref, resolved, apis))
    if spec.autoscaling.enabled:
        out.append(hpa(ref, resolved, apis))
    if front_autoscaled(resolved):
        out.append(front_hpa(ref, resolved, apis))
    if spec.network_policy.enabled:
        out += network_policies(ref, spec, managed_redis=wants_managed_redis(spec))
    return out


__all__ = ["ApiVersions", "Manifest", "render_children"]
