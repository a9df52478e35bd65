"""One shard group per replica: a StatefulSet whose pods are the ranks, a headless Service (stable pod
DNS names) and a ClusterIP leader Service in front of rank 0 (rendezvous without cluster DNS).

Rank = the pod's ordinal (``--rank-from-hostname``); world size = shards; leader = rank 0, reached by the
leader Service's ClusterIP, which the kubelet expands from ``$(<LEADER>_SERVICE_HOST)``. The leader Service
publishes not-ready addresses, because the ranks rendezvous before any of them is ready.
"""

from __future__ import annotations

from typing import Any

from ..naming import CONFIG_DIR, CONFIG_HASH_ANNOTATION, RENDEZVOUS_PORT, ModelRef, service_host_ref
from ..resolve import Resolved
from ..spec import DuplexModelSpec
from .common import Manifest, config_volume, env
from .redis import redis_url_env

TRTLLM_IMAGE_SUFFIX = "-tensorrt-llm"
"""Tag suffix of the engine image built with TensorRT-LLM, used when the backend asks for it and the
image is left at its default."""


def engine_image(spec: DuplexModelSpec) -> str:
    image = spec.engine.image
    default = type(spec.engine).model_fields["image"].default
    if spec.engine.backend == "tensorrt-llm" and image == default:
        return image + TRTLLM_IMAGE_SUFFIX
    return image


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
        "metadata": ref.metadata(ref.leader(replica), "engine", **{"duplex.ai/replica": str(replica)}),
        "spec": {
            "type": "ClusterIP",
            "publishNotReadyAddresses": True,
            "selector": {"statefulset.kubernetes.io/pod-name": f"{ref.engine(replica)}-0"},
            "ports": _ports(resolved.spec),
        },
    }


def _ports(spec: DuplexModelSpec) -> list[dict[str, Any]]:
    ports = [
        {"name": "grpc", "port": spec.engine.port, "targetPort": "grpc", "protocol": "TCP"},
        {"name": "dist", "port": RENDEZVOUS_PORT, "targetPort": "dist", "protocol": "TCP"},
    ]
    if spec.engine.metrics_port:
        ports.append({"name": "metrics", "port": spec.engine.metrics_port, "targetPort": "metrics", "protocol": "TCP"})
    return ports


def rank0_serving_check(port: int) -> str:
    """Readiness of a rank: rank 0 is ready once its gRPC port accepts (it serves only after the shard group
    has assembled and the weights are loaded); ranks > 0 hold experts only and are ready while running. So a
    replica is ready exactly when all of its pods are."""
    return (f"import os, socket; r = os.uname().nodename.rsplit('-', 1)[-1]; "
            f"r != '0' or socket.create_connection(('127.0.0.1', {port}), 2).close()")


def engine_container(ref: ModelRef, resolved: Resolved, replica: int) -> dict[str, Any]:
    spec = resolved.spec
    eng = spec.engine
    sts = ref.engine(replica)
    args = [
        "engine",
        "--rank-from-hostname",
        "--world-size", str(resolved.shards),
        "--leader", "$(DUPLEX_LEADER_ADDR)",
        "--config", f"{CONFIG_DIR}/engine.json",
    ]
    envs: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        env("DUPLEX_REPLICA", str(replica)),
        env("DUPLEX_WORLD_SIZE", str(resolved.shards)),
        env("DUPLEX_LEADER_SERVICE", ref.leader(replica)),
        env("DUPLEX_LEADER_HOST", service_host_ref(ref.leader(replica))),
        env("DUPLEX_LEADER_DNS", f"{sts}-0.{sts}.{ref.namespace}.svc"),
        env("DUPLEX_LEADER_ADDR", f"$(DUPLEX_LEADER_HOST):{RENDEZVOUS_PORT}"),
        env("DUPLEX_BACKEND", eng.backend),
    ]
    if spec.agent.workers > 0:
        envs.append(redis_url_env(ref, spec))
    limits: dict[str, str] = {"cpu": eng.resources.cpu, "memory": eng.resources.memory}
    if eng.gpus_per_shard:
        limits["nvidia.com/gpu"] = str(eng.gpus_per_shard)
    ports = [
        {"name": "grpc", "containerPort": eng.port, "protocol": "TCP"},
        {"name": "dist", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"},
    ]
    container: dict[str, Any] = {
        "name": "engine",
        "image": engine_image(spec),
        "command": ["duplex"],
        "args": args,
        "env": envs,
        "ports": ports,
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": [config_volume(ref.config_map)[1]],
    }
    if eng.metrics_port:
        ports.append({"name": "metrics", "containerPort": eng.metrics_port, "protocol": "TCP"})
    container["readinessProbe"] = {"exec": {"command": ["python3", "-c", rank0_serving_check(eng.port)]},
                                   "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3}
    if eng.gpus_per_shard:
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    return container


def engine_statefulset(ref: ModelRef, resolved: Resolved, replica: int, config_digest: str) -> Manifest:
    spec = resolved.spec
    name = ref.engine(replica)
    extra = {"duplex.ai/replica": str(replica)}
    volumes: list[dict[str, Any]] = [config_volume(ref.config_map)[0]]
    pod_spec: dict[str, Any] = {
        "containers": [engine_container(ref, resolved, replica)],
        "volumes": volumes,
        "enableServiceLinks": True,  # the *_SERVICE_HOST variables are the DNS-free rendezvous
        "terminationGracePeriodSeconds": 30,
    }
    if spec.engine.gpus_per_shard:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})  # NCCL shared memory
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
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
                    "annotations": {CONFIG_HASH_ANNOTATION: config_digest},
                },
                "spec": pod_spec,
            },
        },
    }


__all__ = ["engine_container", "engine_headless_service", "engine_leader_service",
           "engine_statefulset"]
