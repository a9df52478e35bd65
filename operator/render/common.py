"""Small pieces every renderer uses."""

from __future__ import annotations

from typing import Any

from ..naming import CONFIG_DIR

Manifest = dict[str, Any]
"""A Kubernetes object as a plain dict (what the API takes as JSON)."""


def config_volume(config_map: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of the model's ConfigMap at ``/etc/duplex``."""
    return (
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
    )


def secret_volume(
    name: str, secret: str, path: str, keys: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, read-only volumeMount) of a Secret at ``path``: every key a file, or only ``keys``."""
    source: dict[str, Any] = {"secretName": secret}
    if keys is not None:
        source["items"] = [{"key": k, "path": k} for k in keys]
    return (
        {"name": name, "secret": source},
        {"name": name, "mountPath": path, "readOnly": True},
    )


def env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def prometheus_annotations(metrics_port: int) -> dict[str, str]:
    """The ``prometheus.io/*`` pod annotations a Prometheus scrape config (kubernetes_sd) keys on; none when
    the process serves no metrics (port 0)."""
    if not metrics_port:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics_port), "prometheus.io/path": "/metrics"}


def key(manifest: Manifest) -> tuple[str, str, str]:
    """(apiVersion, kind, name): identity of a child inside one namespace."""
    return manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]
