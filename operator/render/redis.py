"""Redis for the background agent's job streams: managed (a Deployment + Service next to the model) or
external (a URL, or a Secret holding it)."""

from __future__ import annotations

from typing import Any

from ..naming import REDIS_PORT, ModelRef, service_host_ref
from ..spec import DuplexModelSpec
from .common import Manifest
from .posture import harden


def wants_managed_redis(spec: DuplexModelSpec) -> bool:
    return spec.agent.workers > 0 and spec.agent.redis.managed


def redis_url_env(ref: ModelRef, spec: DuplexModelSpec) -> dict[str, Any]:
    """``DUPLEX_REDIS_URL`` for engine and agent containers."""
    redis = spec.agent.redis
    if redis.managed:
        return {"name": "DUPLEX_REDIS_URL", "value": f"redis://{service_host_ref(ref.redis)}:{REDIS_PORT}/0"}
    if redis.url_secret:
        return {"name": "DUPLEX_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": redis.url_secret, "key": "url"}}}
    return {"name": "DUPLEX_REDIS_URL", "value": redis.url or ""}


def redis_service(ref: ModelRef) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(ref.redis, "redis"),
        "spec": {
            "type": "ClusterIP",
            "selector": ref.selector("redis"),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}],
        },
    }


def redis_ping_probe(period_s: int = 10) -> dict[str, Any]:
    """``redis-cli ping`` (shipped in the Redis image) exits non-zero unless the server answers."""
    return {
        "exec": {"command": ["redis-cli", "-p", str(REDIS_PORT), "ping"]},
        "periodSeconds": period_s,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }


def redis_deployment(ref: ModelRef, spec: DuplexModelSpec) -> Manifest:
    # In-memory only: job streams are short-lived; losing them on a restart costs retries, not data. With no
    # RDB/AOF the server writes no file, so the read-only root filesystem needs no writable volume.
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ref.metadata(ref.redis, "redis"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": ref.selector("redis")},
            "template": {
                "metadata": {"labels": ref.labels("redis")},
                "spec": harden(
                    {
                        "containers": [
                            {
                                "name": "redis",
                                "image": spec.agent.redis.image,
                                "args": ["--save", "", "--appendonly", "no"],
                                "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
                                "livenessProbe": redis_ping_probe(),
                                "readinessProbe": redis_ping_probe(period_s=5),
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "128Mi"},
                                    "limits": {"cpu": "1", "memory": "1Gi"},
                                },
                            }
                        ],
                    }
                ),
            },
        },
    }
