"""Background agent workers: Redis Streams consumers that run the slow tools."""

from __future__ import annotations

from typing import Any

from ..naming import CONFIG_DIR, CONFIG_HASH_ANNOTATION, ModelRef
from ..spec import DuplexModelSpec
from .common import Manifest, config_volume, prometheus_annotations
from .posture import exec_probe, harden, metrics_probe, startup_probe, tmp_volume
from .redis import redis_url_args, redis_url_env, redis_url_volume


def agent_probes(spec: DuplexModelSpec) -> dict[str, Any]:
    """The metrics port (a worker serves nothing else), or, with metrics off, PID 1's state."""
    if spec.agent.metrics_port:
        return {
            "ports": [{"name": "metrics", "containerPort": spec.agent.metrics_port, "protocol": "TCP"}],
            "startupProbe": startup_probe(metrics_probe()),  # a slow start is not a hang
            "livenessProbe": metrics_probe(),
            "readinessProbe": metrics_probe(),
        }
    return {"livenessProbe": exec_probe(["process"]), "readinessProbe": exec_probe(["process"])}


def agent_deployment(ref: ModelRef, spec: DuplexModelSpec, config_digest: str) -> Manifest:
    volume, mount = config_volume(ref.config_map)
    # HOME is /tmp in the image: tempfile and HOME-relative caches need it
    volumes, mounts = [volume, tmp_volume()[0]], [mount, tmp_volume()[1]]
    redis_url = redis_url_volume(spec)
    if redis_url is not None:  # url_secret: the URL as a file, named by $DUPLEX_REDIS_URL_FILE
        volumes.append(redis_url[0])
        mounts.append(redis_url[1])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ref.metadata(ref.agent, "agent"),
        "spec": {
            "replicas": spec.agent.workers,
            "selector": {"matchLabels": ref.selector("agent")},
            "template": {
                "metadata": {
                    "labels": ref.labels("agent"),
                    "annotations": {
                        CONFIG_HASH_ANNOTATION: config_digest,
                        **prometheus_annotations(spec.agent.metrics_port),
                    },
                },
                "spec": harden(
                    {
                        "containers": [
                            {
                                "name": "agent",
                                "image": spec.engine.image,
                                "command": ["duplex"],
                                "args": ["agent", *redis_url_args(spec), "--config", f"{CONFIG_DIR}/agent.json"],
                                "env": [redis_url_env(ref, spec)],
                                "resources": {
                                    "requests": {"cpu": "250m", "memory": "256Mi"},
                                    "limits": {"cpu": "1", "memory": "1Gi"},
                                },
                                "volumeMounts": mounts,
                                **agent_probes(spec),
                            }
                        ],
                        "volumes": volumes,
                        "enableServiceLinks": True,
                    }
                ),
            },
        },
    }
