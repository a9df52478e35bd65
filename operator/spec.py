"""The ``DuplexModel`` spec: the serving specs (``ModelSource``, ``EngineSpec``, ``GatewaySpec``,
``AgentSpec``) composed with what only the operator needs (replicas, autoscaling, SLO, checkpoint volume).

The CRD schema, the Helm values schema and the CLI all come from these classes. In Kubernetes objects the
field names are camelCase (``gpuMemoryGib``): pydantic's ``to_camel`` alias generator (``SPEC_CONFIG``); in
Python they are the snake_case attribute names.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from duplex.model.spec import ModelSource
from duplex.serving.spec import SPEC_CONFIG, AgentSpec, EngineSpec, GatewaySpec


class _Spec(BaseModel):
    model_config = SPEC_CONFIG


_M = TypeVar("_M", bound=BaseModel)


def _nested(cls: type[_M]) -> Any:
    """Default of a nested spec field: a fresh instance with all of its own defaults."""
    return Field(default_factory=lambda: cls.model_validate({}))


class ModelSpec(ModelSource):
    """Which weights to serve, of which model family, in what precision and with which sampling (the serving
    ``ModelSource``, with camelCase names like every other section: ``topK``)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class CheckpointVolumeSpec(_Spec):
    """A volume holding the checkpoint, mounted read-only at ``mountPath`` into every engine pod
    (``model.uri`` must then lie under ``mountPath``). Neither ``claimName`` nor ``hostPath``: no volume, the
    checkpoint is in the image (or none: the shipped reference checkpoint, or random weights)."""

    claim_name: str = ""
    """PersistentVolumeClaim holding the checkpoint, mounted read-only into every engine pod; its access mode
    must let every engine pod's node mount it (ReadOnlyMany, or ReadWriteOnce on a single node)."""
    host_path: str = ""
    """Directory on the node, mounted read-only (single-node clusters and development: each pod reads the
    directory of whatever node it lands on; the Pod Security Standards' baseline profile forbids it)."""
    mount_path: str = Field("/models", pattern=r"^/")
    """Where the volume appears in the engine container (an absolute path clear of ``/etc/duplex``, ``/tmp``
    and ``/dev/shm``)."""


class AutoscalingSpec(_Spec):
    """Horizontal scaling of engine replicas (shard groups) on live sessions."""

    enabled: bool = False
    """Create a HorizontalPodAutoscaler that sets ``replicas`` through the DuplexModel's scale subresource."""
    min_replicas: int = Field(1, ge=1)
    """Fewest engine replicas the autoscaler keeps."""
    max_replicas: int = Field(4, ge=1)
    """Most engine replicas the autoscaler creates."""
    target_sessions_per_replica: int = Field(48, ge=1)
    """Average live sessions per replica the autoscaler aims for (metric ``duplex_active_sessions``)."""


class SloSpec(_Spec):
    """Turn-taking latency objectives (time from the end of user speech to the first model audio)."""

    turn_taking_p50_s: float = Field(0.30, gt=0)
    """Target median turn-taking latency in seconds."""
    turn_taking_p95_s: float = Field(0.45, gt=0)
    """Target 95th-percentile turn-taking latency in seconds."""


class NetworkPolicySpec(_Spec):
    """Kubernetes NetworkPolicies around the model's pods (they need a CNI that enforces them)."""

    enabled: bool = False
    """Render one NetworkPolicy per component: the gateway's port open to any client; engines, Redis and agent
    workers reachable only from this model's own pods; metrics ports open for scraping."""


class DuplexModelSpec(_Spec):
    """A served full-duplex model: ``replicas`` shard groups of ``engine.shards`` ranks, a gateway in front
    and a background agent beside it."""

    model: ModelSpec = _nested(ModelSpec)
    """Which weights to serve."""
    checkpoint: CheckpointVolumeSpec = _nested(CheckpointVolumeSpec)
    """The volume the engine pods read the checkpoint from (``model.uri``)."""
    engine: EngineSpec = _nested(EngineSpec)
    """Engine ranks (one StatefulSet per replica, one pod per shard)."""
    replicas: int = Field(1, ge=0)
    """Engine replicas (independent shard groups). Written by the autoscaler when autoscaling is enabled."""
    autoscaling: AutoscalingSpec = _nested(AutoscalingSpec)
    """Scale replicas on live sessions."""
    gateway: GatewaySpec = _nested(GatewaySpec)
    """Public endpoint: auth, admission, routing."""
    agent: AgentSpec = _nested(AgentSpec)
    """Background agent workers and their Redis."""
    slo: SloSpec = _nested(SloSpec)
    """Latency objectives the load test gates on."""
    network_policy: NetworkPolicySpec = _nested(NetworkPolicySpec)
    """Ingress NetworkPolicies for the model's pods."""

    @classmethod
    def from_k8s(cls, spec: dict[str, Any] | None) -> DuplexModelSpec:
        """Parse the camelCase ``spec`` of a DuplexModel object."""
        return cls.model_validate(dict(spec or {}))

    def to_k8s(self) -> dict[str, Any]:
        """The camelCase ``spec`` of a DuplexModel object (every field, defaults included)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
