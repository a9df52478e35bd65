"""One shard group per replica: a StatefulSet whose pods are the ranks, a headless Service (stable pod
DNS names) and a ClusterIP leader Service in front of rank 0 (rendezvous without cluster DNS).

Rank = the pod's ordinal (``--rank-from-hostname``); world size = shards; leader = rank 0, reached by the
leader Service's ClusterIP, which the kubelet expands from ``$(<LEADER>_SERVICE_HOST)``. The leader Service
publishes not-ready addresses, because the ranks rendezvous before any of them is ready.

Every rank serves ``/metrics`` on ``engine.metricsPort`` (rank 0: sessions, steps, latencies; ranks > 0:
expert timings and process metrics), so the port and the ``prometheus.io/*`` annotations are on every pod.

``spec.checkpoint`` mounts the checkpoint's volume (a PersistentVolumeClaim or a node directory) read-only at
its ``mountPath`` in every rank: a Moshi-family checkpoint directory, or a duplex ``.safetensors`` file.
"""

from __future__ import annotations

import math
from typing import Any

from ..naming import CONFIG_DIR, CONFIG_HASH_ANNOTATION, LEADER_LABEL, RENDEZVOUS_PORT, ModelRef, service_host_ref
from ..resolve import Resolved
from ..spec import DuplexModelSpec
from .common import Manifest, config_volume, env, prometheus_annotations
from .posture import STARTUP_FAILURES, STARTUP_PERIOD_S, exec_probe, harden, tmp_volume
from .redis import redis_url_env, redis_url_volume

LEADER_ADDR_ENV = "DUPLEX_LEADER_ADDR"
"""Rank 0's rendezvous ``HOST:PORT``; the kubelet expands it into the ``--leader`` argument."""


def engine_headless_service(ref: ModelRef, resolved: Resolved, replica: int) -> Manifest:
    name = ref.engine(replica)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(name, "engine", **{"duplex.ai/replica": str(replica)}),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": ref.selector("engine", **{"duplex.ai/replica": str(replica)}),
            "ports": _ports(resolved.spec),
        },
    }


def engine_leader_service(ref: ModelRef, resolved: Resolved, replica: int) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ref.metadata(
            ref.leader(replica), "engine", **{"duplex.ai/replica": str(replica), LEADER_LABEL: "true"}
        ),
        "spec": {
            "type": "ClusterIP",
            "publishNotReadyAddresses": True,
            "selector": {"statefulset.kubernetes.io/pod-name": f"{ref.engine(replica)}-0"},
            "ports": _ports(resolved.spec),
        },
    }


REALTIME_PORT = 7071
"""Rank 0's Realtime WebSocket port when ``gateway.httpPort`` is set and ``engine.httpPort`` is not."""


def realtime_port(spec: DuplexModelSpec) -> int:
    """The engine's Realtime WebSocket port (0 = none): ``engine.httpPort``, or ``REALTIME_PORT`` when the
    model serves the Realtime endpoint (``gateway.httpPort``)."""
    if not spec.gateway.http_port:
        return spec.engine.http_port
    return spec.engine.http_port or REALTIME_PORT


def _ports(spec: DuplexModelSpec) -> list[dict[str, Any]]:
    ports = [
        {"name": "grpc", "port": spec.engine.port, "targetPort": "grpc", "protocol": "TCP"},
        {"name": "dist", "port": RENDEZVOUS_PORT, "targetPort": "dist", "protocol": "TCP"},
    ]
    if realtime_port(spec):  # Envoy reaches the WebSocket through the leader Service's ClusterIP, as gRPC
        ports.append({"name": "realtime", "port": realtime_port(spec), "targetPort": "realtime", "protocol": "TCP"})
    if spec.engine.metrics_port:
        ports.append({"name": "metrics", "port": spec.engine.metrics_port, "targetPort": "metrics", "protocol": "TCP"})
    return ports


CHECKPOINT_VOLUME = "checkpoint"


def checkpoint_volume(spec: DuplexModelSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(volume, read-only volumeMount) of ``spec.checkpoint``; None when it names no volume."""
    ck = spec.checkpoint
    if ck.claim_name:
        source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": ck.claim_name, "readOnly": True}}
    elif ck.host_path:
        source = {"hostPath": {"path": ck.host_path, "type": "Directory"}}  # read-only by its mount
    else:
        return None
    return (
        {"name": CHECKPOINT_VOLUME, **source},
        {"name": CHECKPOINT_VOLUME, "mountPath": ck.mount_path, "readOnly": True},
    )


def engine_probe(spec: DuplexModelSpec, mode: str) -> list[str]:
    """Arguments of ``duplex.operator.probe engine``: rank 0 by its gRPC service (``ready``: health SERVING,
    which it answers only once the shard group has assembled and the weights are loaded; ``live``: the port
    accepts), ranks > 0 by their ``/metrics``. So a replica is ready exactly when all of its pods are."""
    return ["engine", mode, "--port", str(spec.engine.port), "--metrics-port", str(spec.engine.metrics_port)]


def engine_container(ref: ModelRef, resolved: Resolved, replica: int) -> dict[str, Any]:
    spec = resolved.spec
    eng = spec.engine
    args = [
        "engine",
        "--rank-from-hostname",
        "--world-size",
        str(resolved.shards),
        "--leader",
        f"$({LEADER_ADDR_ENV})",
        "--config",
        f"{CONFIG_DIR}/engine.json",
    ]
    envs: list[dict[str, Any]] = [env(LEADER_ADDR_ENV, f"{service_host_ref(ref.leader(replica))}:{RENDEZVOUS_PORT}")]
    if spec.agent.workers > 0:
        envs.append(redis_url_env(ref, spec))
    limits: dict[str, str] = {"cpu": eng.resources.cpu, "memory": eng.resources.memory}
    if eng.gpus_per_shard:
        limits["nvidia.com/gpu"] = str(eng.gpus_per_shard)
    ports = [
        {"name": "grpc", "containerPort": eng.port, "protocol": "TCP"},
        {"name": "dist", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"},
    ]
    if realtime_port(spec):
        ports.append({"name": "realtime", "containerPort": realtime_port(spec), "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "engine",
        "image": eng.image,
        "command": ["duplex"],
        "args": args,
        "env": envs,
        "ports": ports,
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": [config_volume(ref.config_map)[1]],
    }
    if eng.metrics_port:
        ports.append({"name": "metrics", "containerPort": eng.metrics_port, "protocol": "TCP"})
    # Liveness waits for the startup probe: rendezvous and weight loading may take minutes.
    container["startupProbe"] = exec_probe(
        engine_probe(spec, "live"), period_s=STARTUP_PERIOD_S, failures=STARTUP_FAILURES
    )
    container["livenessProbe"] = exec_probe(engine_probe(spec, "live"))
    container["readinessProbe"] = exec_probe(engine_probe(spec, "ready"), period_s=5)
    container["volumeMounts"].append(tmp_volume()[1])  # torch's temporary files
    if eng.gpus_per_shard:
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    checkpoint = checkpoint_volume(spec)
    if checkpoint is not None:
        container["volumeMounts"].append(checkpoint[1])
    redis_url = redis_url_volume(spec)
    if redis_url is not None:  # url_secret: the URL as a file, named by $DUPLEX_REDIS_URL_FILE
        container["volumeMounts"].append(redis_url[1])
    return container


STOP_MARGIN_S = 10
"""Added to ``engine.drainGraceS`` for the pod's ``terminationGracePeriodSeconds``: the engine's own exit."""


def engine_statefulset(ref: ModelRef, resolved: Resolved, replica: int, config_digest: str) -> Manifest:
    spec = resolved.spec
    name = ref.engine(replica)
    extra = {"duplex.ai/replica": str(replica)}
    volumes: list[dict[str, Any]] = [config_volume(ref.config_map)[0], tmp_volume()[0]]
    pod_spec: dict[str, Any] = {
        "containers": [engine_container(ref, resolved, replica)],
        "volumes": volumes,
        "enableServiceLinks": True,  # the *_SERVICE_HOST variables are the DNS-free rendezvous
        "terminationGracePeriodSeconds": math.ceil(spec.engine.drain_grace_s) + STOP_MARGIN_S,
    }
    if spec.engine.gpus_per_shard:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})  # NCCL shared memory
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    checkpoint = checkpoint_volume(spec)
    if checkpoint is not None:
        volumes.append(checkpoint[0])
    redis_url = redis_url_volume(spec)
    if redis_url is not None:
        volumes.append(redis_url[0])
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": ref.metadata(name, "engine", **extra),
        "spec": {
            "serviceName": name,
            "replicas": resolved.shards,
            "podManagementPolicy": "Parallel",  # all ranks start together and rendezvous
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": ref.selector("engine", **extra)},
            "template": {
                "metadata": {
                    "labels": ref.labels("engine", **extra),
                    "annotations": {
                        CONFIG_HASH_ANNOTATION: config_digest,
                        **prometheus_annotations(spec.engine.metrics_port),
                    },
                },
                "spec": harden(pod_spec),
            },
        },
    }


__all__ = [
    "checkpoint_volume",
    "engine_container",
    "engine_headless_service",
    "engine_leader_service",
    "engine_statefulset",
]
