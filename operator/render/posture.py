"""The pod posture every rendered workload shares (docs/security.md, "Pod posture").

Non-root with a high UID/GID, read-only root filesystem (writable ``emptyDir`` only where the process
writes), no privilege escalation, every capability dropped, the runtime's default seccomp profile, no
automounted service-account token (only the front pod's session picker calls the Kubernetes API, with a
projected token mounted in its container alone: ``front.py``), and probes Kubernetes 1.20 kubelets run
(``exec``, ``httpGet``, ``tcpSocket``; no ``grpc:`` probes). The probe commands live in
:mod:`duplex.operator.probe`, run inside the container as ``python3 -m duplex.operator.probe``.
"""

from __future__ import annotations

from typing import Any

RUN_AS = 10001
"""UID, GID and fsGroup of every rendered pod: high enough not to collide with a host user (checkov CKV_K8S_40)."""

TMP_DIR = "/tmp"
TMP_SIZE_LIMIT = "1Gi"
"""Bound on a pod's scratch space (engine: torch's temporary files; gateway, agent: tempfile and HOME caches),
so a runaway writer evicts its pod, not others."""

PROBE = ["python3", "-m", "duplex.operator.probe"]
"""The probe runner, as the container image runs it (the package is installed for ``python3``)."""

STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 90
"""An engine may take up to 15 minutes (90 x 10 s) to rendezvous and load its weights before liveness applies."""
PROCESS_STARTUP_FAILURES = 18
"""The gateway and the agent get 3 minutes (18 x 10 s) to start listening: importing the package takes tens of
seconds on a loaded node, and liveness (3 x 10 s) would otherwise kill them before they ever listen."""


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,  # mounted Secrets/ConfigMaps/emptyDirs readable by the process
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    # Repeated per container: admission policies and scanners judge containers one by one.
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def harden(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """``pod_spec`` with the shared posture applied to the pod and to each of its containers."""
    for container in pod_spec["containers"]:
        container["securityContext"] = container_security_context()
    pod_spec["securityContext"] = pod_security_context()
    pod_spec["automountServiceAccountToken"] = False
    return pod_spec


def tmp_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of a writable ``/tmp`` on the read-only root filesystem."""
    return (
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
        {"name": "tmp", "mountPath": TMP_DIR},
    )


def exec_probe(args: list[str], period_s: int = 10, timeout_s: int = 5, failures: int = 3) -> dict[str, Any]:
    """A probe running ``python3 -m duplex.operator.probe ARGS`` in the container."""
    return {
        "exec": {"command": [*PROBE, *args]},
        "periodSeconds": period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failures,
    }


def startup_probe(liveness: dict[str, Any], failures: int = PROCESS_STARTUP_FAILURES) -> dict[str, Any]:
    """The liveness check as a startup probe: liveness and readiness wait until it first succeeds."""
    return {**liveness, "periodSeconds": STARTUP_PERIOD_S, "failureThreshold": failures}


def tcp_probe(port: str, period_s: int = 10) -> dict[str, Any]:
    return {"tcpSocket": {"port": port}, "periodSeconds": period_s, "timeoutSeconds": 3, "failureThreshold": 3}


def metrics_probe(port: str = "metrics", period_s: int = 10) -> dict[str, Any]:
    """``GET /metrics``: answered by the process's own metrics thread (prometheus_client)."""
    return {
        "httpGet": {"path": "/metrics", "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
