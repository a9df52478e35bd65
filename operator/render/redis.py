"""Redis for the background agent's job streams: managed (a Deployment + Service next to the model) or
external (a URL, or a Secret holding it, mounted read-only as a file: checkov's CKV_K8S_35 is enforced)."""

from __future__ import annotations

from typing import Any

from ..naming import CONFIG_DIR, REDIS_PORT, ModelRef, service_host_ref
from ..spec import DuplexModelSpec
from .common import Manifest, env, secret_volume
from .posture import harden

REDIS_URL_ENV = "DUPLEX_REDIS_URL"
"""The URL itself (``duplex engine``'s ``--redis-url`` envvar; ``duplex agent --redis-url $(DUPLEX_REDIS_URL)``)."""
REDIS_URL_FILE_ENV = "DUPLEX_REDIS_URL_FILE"
"""The file holding the URL (``--redis-url-file``'s envvar in both commands)."""
REDIS_URL_KEY = "url"
"""The key of ``spec.agent.redis.urlSecret`` holding the URL."""
REDIS_URL_DIR = f"{CONFIG_DIR}/redis"
REDIS_URL_FILE = f"{REDIS_URL_DIR}/{REDIS_URL_KEY}"


def wants_managed_redis(spec: DuplexModelSpec) -> bool:
    return spec.agent.workers > 0 and spec.agent.redis.managed


def url_from_secret(spec: DuplexModelSpec) -> bool:
    """Whether the external Redis URL comes from ``url_secret`` (then it reaches the processes as a file)."""
    return not spec.agent.redis.managed and bool(spec.agent.redis.url_secret)


def redis_url_env(ref: ModelRef, spec: DuplexModelSpec) -> dict[str, Any]:
    """How engine and agent containers get the Redis URL: ``DUPLEX_REDIS_URL`` (the managed Redis's URL, or
    the plain ``url``), or, for ``url_secret``, ``DUPLEX_REDIS_URL_FILE`` naming the Secret's key ``url``
    mounted as a file (:func:`redis_url_volume`): a Secret never becomes an environment variable."""
    redis = spec.agent.redis
    if url_from_secret(spec):
        return env(REDIS_URL_FILE_ENV, REDIS_URL_FILE)
    if redis.managed:
        return env(REDIS_URL_ENV, f"redis://{service_host_ref(ref.redis)}:{REDIS_PORT}/0")
    return env(REDIS_URL_ENV, redis.url or "")


def redis_url_args(spec: DuplexModelSpec) -> list[str]:
    """The ``duplex agent`` flag taking :func:`redis_url_env`'s variable (the kubelet expands it)."""
    if url_from_secret(spec):
        return ["--redis-url-file", f"$({REDIS_URL_FILE_ENV})"]
    return ["--redis-url", f"$({REDIS_URL_ENV})"]


def redis_url_volume(spec: DuplexModelSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(volume, read-only volumeMount) of ``url_secret``'s key ``url`` at ``REDIS_URL_FILE``, for engine and agent
    containers; None without agent workers or without ``url_secret``."""
    secret = spec.agent.redis.url_secret
    if spec.agent.workers == 0 or not url_from_secret(spec) or not secret:
        return None
    return secret_volume("redis-url", secret, REDIS_URL_DIR, keys=[REDIS_URL_KEY])


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
