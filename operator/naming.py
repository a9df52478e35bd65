"""Names, labels and owner references of the objects the operator creates.

Every child carries ``duplex.ai/model=<name>`` (to list and prune them) and an owner reference to its
DuplexModel (so deleting the model garbage-collects them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

from duplex.serving.picker.watch import LEADER_LABEL as _LEADER_LABEL

GROUP = "duplex.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DuplexModel"
PLURAL = "duplexmodels"
SINGULAR = "duplexmodel"
SHORT_NAMES = ["dm"]

MANAGED_BY = "duplex-operator"
"""Value of ``app.kubernetes.io/managed-by`` on every child; the operator watches children by it."""
MODEL_LABEL = f"{GROUP}/model"
REPLICA_LABEL = f"{GROUP}/replica"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
LEADER_LABEL = _LEADER_LABEL
"""``true`` on each replica's leader Service (rank 0): the front's session picker watches their EndpointSlices."""

RENDEZVOUS_PORT = 29500
"""torch.distributed rendezvous port on rank 0 (the leader)."""
REDIS_PORT = 6379
CONFIG_DIR = "/etc/duplex"


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """Identity of one DuplexModel: enough to name its children and to own them."""

    name: str
    namespace: str
    uid: str
    """The DuplexModel's uid; empty when rendering offline, before the object exists."""

    @classmethod
    def from_body(cls, body: Any) -> ModelRef:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    # --- child names --------------------------------------------------------------------------------
    @property
    def config_map(self) -> str:
        return f"{self.name}-config"

    def engine(self, replica: int) -> str:
        """StatefulSet (and headless Service) of one replica; its pods are ``<this>-<rank>``."""
        return f"{self.name}-engine-{replica}"

    def leader(self, replica: int) -> str:
        """ClusterIP Service in front of rank 0 of one replica: rendezvous without cluster DNS."""
        return f"{self.name}-engine-{replica}-leader"

    @property
    def front(self) -> str:
        """Deployment of the front pods: Envoy and the session picker (docs/operator.md)."""
        return f"{self.name}-front"

    @property
    def endpoint_service(self) -> str:
        """The public Service: named like the model itself."""
        return self.name

    @property
    def agent(self) -> str:
        return f"{self.name}-agent"

    @property
    def redis(self) -> str:
        return f"{self.name}-redis"

    @property
    def engine_pdb(self) -> str:
        return f"{self.name}-engine"

    @property
    def front_pdb(self) -> str:
        return f"{self.name}-front"

    def network_policy(self, component: str) -> str:
        """The ingress NetworkPolicy of one component's pods (``spec.networkPolicy``)."""
        return f"{self.name}-{component}"

    @property
    def hpa(self) -> str:
        return self.name

    @property
    def front_hpa(self) -> str:
        return f"{self.name}-front"

    @property
    def leader_selector(self) -> str:
        """Label selector of the engines' leader Services, and of their EndpointSlices (the EndpointSlice
        controller copies a Service's labels onto its slices): what the session picker watches."""
        return f"{MODEL_LABEL}={self.name},{COMPONENT_LABEL}=engine,{LEADER_LABEL}=true"

    @property
    def engine_selector(self) -> str:
        """Label selector of all engine pods (the scale subresource's ``status.selector``)."""
        return f"{MODEL_LABEL}={self.name},{COMPONENT_LABEL}=engine"

    # --- metadata -----------------------------------------------------------------------------------
    def labels(self, component: str, **extra: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "duplex",
            "app.kubernetes.io/instance": self.name,
            COMPONENT_LABEL: component,
            MANAGED_BY_LABEL: MANAGED_BY,
            MODEL_LABEL: self.name,
            **extra,
        }

    def selector(self, component: str, **extra: str) -> dict[str, str]:
        """The stable subset of ``labels`` used in selectors (selectors are immutable)."""
        return {MODEL_LABEL: self.name, COMPONENT_LABEL: component, **extra}

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(self, name: str, component: str, **extra_labels: str) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component, **extra_labels),
        }
        if self.uid:  # offline (``duplex render``) the model has no uid yet: no owner reference to point at it
            meta["ownerReferences"] = [self.owner_reference()]
        return meta


def service_env_prefix(service: str) -> str:
    """Prefix of the ``<SVC>_SERVICE_HOST`` variables Kubernetes injects for ``service``."""
    return re.sub(r"[^A-Z0-9]", "_", service.upper())


def service_host_ref(service: str) -> str:
    """``$(X_SERVICE_HOST)``: expanded by the kubelet in env values and args to the Service's ClusterIP."""
    return f"$({service_env_prefix(service)}_SERVICE_HOST)"


AGENT_PREFIX_MAX = 64
"""``agent.stream_prefix`` is at most this long (``duplex.serving.spec.AgentSpec``)."""


def agent_stream_prefix(ref: ModelRef) -> str:
    """The Redis key prefix of one DuplexModel's agent, shared by its engines and workers: ``duplex:NS:NAME``,
    or ``duplex:`` and a digest of both when that would be longer than a prefix may be."""
    prefix = f"duplex:{ref.namespace}:{ref.name}"
    if len(prefix) <= AGENT_PREFIX_MAX:
        return prefix
    return "duplex:" + hashlib.sha256(f"{ref.namespace}/{ref.name}".encode()).hexdigest()[:32]
