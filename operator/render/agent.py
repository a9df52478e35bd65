"""Background agent workers: Redis Streams consumers that run the slow tools."""

from __future__ import annotations

from ..naming import CONFIG_DIR, CONFIG_HASH_ANNOTATION, ModelRef
from ..spec import DuplexModelSpec
from .common import Manifest, config_volume
from .redis import redis_url_env


def agent_deployment(ref: ModelRef, spec: DuplexModelSpec, config_digest: str) -> Manifest:
    volume, mount = config_volume(ref.config_map)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ref.metadata(ref.agent, "agent"),
        "spec": {
            "replicas": spec.agent.workers,
            "selector": {"matchLabels": ref.selector("agent")},
            "template": {
                "metadata": {"labels": ref.labels("agent"), "annotations": {CONFIG_HASH_ANNOTATION: config_digest}},
                "spec": {
                    "containers": [
                        {
                            "name": "agent",
                            "image": spec.engine.image,
                            "command": ["duplex"],
                            "args": [
                                "agent",
                                "--redis-url",
                                "$(DUPLEX_REDIS_URL)",
                                "--config",
                                f"{CONFIG_DIR}/agent.json",
                            ],
                            "env": [redis_url_env(ref, spec)],
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"cpu": "1", "memory": "1Gi"},
                            },
                            "volumeMounts": [mount],
                        }
                    ],
                    "volumes": [volume],
                    "enableServiceLinks": True,
                },
            },
        },
    }
