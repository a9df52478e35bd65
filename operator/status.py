"""Status of a DuplexModel, computed from its spec and its children (pure functions).

Conditions follow the Kubernetes convention (type, status, reason, message, lastTransitionTime,
observedGeneration); messages say what an admin should do next.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from pydantic import BaseModel, Field

from duplex.model.planner import kv_bytes_per_session, shard_weight_bytes
from duplex.serving.spec import SPEC_CONFIG

from .naming import REPLICA_LABEL, ModelRef
from .resolve import Resolved, SpecProblem


class _Status(BaseModel):
    model_config = SPEC_CONFIG


class Condition(_Status):
    """One aspect of the model's state."""

    type: str
    """Ready, Progressing or Degraded."""
    status: str
    """True, False or Unknown."""
    reason: str
    """CamelCase reason, for machines."""
    message: str = ""
    """What is going on and what to do, for people."""
    last_transition_time: str = ""
    """When ``status`` last changed (RFC 3339)."""
    observed_generation: int = 0
    """The ``metadata.generation`` this condition was computed for."""


class ShardPlanStatus(_Status):
    """How one replica is split into ranks, and the memory its rank 0 needs."""

    shards: int
    """Ranks per replica (world size); always 1 for the Moshi family."""
    source: str
    """``spec`` (explicit count) or ``planner`` (``shards: auto``; for the Moshi family, one rank)."""
    experts_per_shard: int
    """Routed experts each rank holds (0 for the Moshi family, which has none)."""
    bytes_per_shard: int
    """Memory rank 0 needs: its weights plus the KV caches of maxSessions sessions. Moshi family: the published
    7B shape's weights plus maxSessions full-window sessions from its session plan; 0 when not planned (on CPU,
    or when the operator's image lacks the upstream ``moshi`` package)."""
    memory_gib_per_rank: float
    """Memory each rank has (GPU memory x GPUs per shard, or the container's memory)."""
    min_shards: int | None = None
    """Smallest shard count that fits (``duplex`` family, from the size planner)."""
    total_params: int = 0
    """Parameters of the whole model, from the plan (Moshi family: LM + Mimi of the 7B shape); 0 when not
    planned."""
    family: str = "duplex"
    """The model family the engines serve: ``duplex``, ``moshi`` or ``personaplex``."""
    max_sessions_fit: int | None = None
    """Moshi family on GPUs: full-window sessions that fit a replica's GPU memory next to the weights (the
    session plan ``maxSessions`` is checked against)."""


class DuplexModelStatus(_Status):
    """Observed state, written by the operator (``measuredTurnTakingP50S`` by the load test)."""

    observed_generation: int = 0
    """Last ``metadata.generation`` the operator acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Progressing, Degraded."""
    replicas: int = 0
    """Engine replicas desired (scale subresource)."""
    ready_replicas: int = 0
    """Engine replicas whose every rank is ready."""
    selector: str = ""
    """Label selector of the engine pods (scale subresource)."""
    shard_plan: ShardPlanStatus | None = None
    """The shard split in use."""
    endpoint: str = ""
    """Where clients connect (the public Service in front of Envoy)."""
    measured_turn_taking_p50_s: float | None = None
    """Last measured turn-taking p50 in seconds (written by ``duplex loadtest``), when known."""


@dataclasses.dataclass(frozen=True)
class WorkloadState:
    """What a StatefulSet or Deployment reports."""

    name: str
    desired: int
    ready: int
    updated: int
    current_generation: bool
    """The controller has seen the latest spec (status.observedGeneration == metadata.generation)."""

    @property
    def settled(self) -> bool:
        return self.current_generation and self.ready >= self.desired and self.updated >= self.desired


def workload_state(obj: dict[str, Any]) -> WorkloadState:
    spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj["metadata"]
    desired = int(spec.get("replicas", 1))
    return WorkloadState(
        name=meta["name"],
        desired=desired,
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        current_generation=int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
    )


@dataclasses.dataclass(frozen=True)
class Observed:
    """The children the operator found, by role."""

    engines: dict[int, WorkloadState]
    """Replica index -> its StatefulSet."""
    deployments: dict[str, WorkloadState]
    """Deployment name -> state."""
    endpoint: str


def observe(statefulsets: list[dict[str, Any]], deployments: list[dict[str, Any]], endpoint: str) -> Observed:
    engines = {}
    for sts in statefulsets:
        replica = (sts["metadata"].get("labels") or {}).get(REPLICA_LABEL)
        if replica is not None and replica.isdigit():
            engines[int(replica)] = workload_state(sts)
    return Observed(
        engines=engines, deployments={d["metadata"]["name"]: workload_state(d) for d in deployments}, endpoint=endpoint
    )


def shard_plan_status(resolved: Resolved) -> ShardPlanStatus:
    cfg, n = resolved.config, resolved.shards
    if cfg is None:
        return _moshi_plan_status(resolved)
    need = shard_weight_bytes(cfg, n, 0) + resolved.spec.engine.max_sessions * kv_bytes_per_session(cfg)
    return ShardPlanStatus(
        shards=n,
        source=resolved.shards_source,
        experts_per_shard=cfg.n_experts // n,
        bytes_per_shard=need,
        memory_gib_per_rank=round(resolved.memory_gib_per_rank, 3),
        min_shards=resolved.plan.shards if resolved.plan else None,
        total_params=resolved.plan.total_params if resolved.plan else 0,
    )


def _moshi_plan_status(resolved: Resolved) -> ShardPlanStatus:
    """A Moshi-family replica: one rank holding the whole model and every session."""
    moshi = resolved.moshi_plan
    return ShardPlanStatus(
        shards=resolved.shards,
        source=resolved.shards_source,
        experts_per_shard=0,
        bytes_per_shard=moshi.weight_bytes + resolved.spec.engine.max_sessions * moshi.session_bytes if moshi else 0,
        memory_gib_per_rank=round(resolved.memory_gib_per_rank, 3),
        total_params=moshi.lm_params + moshi.mimi_params if moshi else 0,
        family=resolved.family,
        max_sessions_fit=moshi.sessions if moshi else None,
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    previous: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str, generation: int
) -> Condition:
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    unchanged = old is not None and old.get("status") == value and old.get("lastTransitionTime")
    since = old["lastTransitionTime"] if unchanged and old is not None else _now()
    return Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=str(since),
        observed_generation=generation,
    )


def invalid_status(
    ref: ModelRef, problems: list[SpecProblem], generation: int, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """Status for a spec that cannot be served: Degraded names every field to fix; nothing is created."""
    prev = (previous or {}).get("conditions") or []
    msg = "; ".join(f"{p.field}: {p.message}" for p in problems) + ". Fix the spec; no children are created."
    status = DuplexModelStatus(
        observed_generation=generation,
        conditions=[
            _condition(prev, "Ready", False, "InvalidSpec", msg, generation),
            _condition(prev, "Progressing", False, "InvalidSpec", "waiting for a valid spec", generation),
            _condition(prev, "Degraded", True, "InvalidSpec", msg, generation),
        ],
        selector=ref.engine_selector,
        measured_turn_taking_p50_s=(previous or {}).get("measuredTurnTakingP50S"),
    )
    return dump(status)


@dataclasses.dataclass
class _Progress:
    """What the children report, summed up for the conditions."""

    ready_replicas: int = 0
    waiting: list[str] = dataclasses.field(default_factory=list)
    """What is not ready yet, and what to check."""
    rolling: list[str] = dataclasses.field(default_factory=list)
    """Children whose controller is rolling out a new spec."""


def _engine_progress(ref: ModelRef, resolved: Resolved, observed: Observed, progress: _Progress) -> None:
    for i in range(resolved.spec.replicas):
        st = observed.engines.get(i)
        if st is None:
            progress.waiting.append(f"engine replica {i}: StatefulSet {ref.engine(i)} not created yet")
            continue
        if st.settled and st.desired == resolved.shards:
            progress.ready_replicas += 1
            continue
        if not st.current_generation or st.updated < st.desired or st.desired != resolved.shards:
            progress.rolling.append(ref.engine(i))
        progress.waiting.append(
            f"engine replica {i}: {st.ready}/{resolved.shards} ranks ready — check "
            f"`kubectl -n {ref.namespace} get pods -l {REPLICA_LABEL}={i},{ref.engine_selector}` "
            "(GPU capacity, image pull, /readyz)"
        )


def _deployment_progress(ref: ModelRef, resolved: Resolved, observed: Observed, progress: _Progress) -> None:
    spec = resolved.spec
    wanted = {ref.front: spec.gateway.replicas}
    if spec.agent.workers > 0:
        wanted[ref.agent] = spec.agent.workers
        if spec.agent.redis.managed:
            wanted[ref.redis] = 1
    for name, n in wanted.items():
        dep = observed.deployments.get(name)
        if dep is None:
            progress.waiting.append(f"Deployment {name} not created yet")
        elif not dep.settled:
            if not dep.current_generation or dep.updated < dep.desired:
                progress.rolling.append(name)
            progress.waiting.append(
                f"Deployment {name}: {dep.ready}/{n} pods ready — check "
                f"`kubectl -n {ref.namespace} describe deployment {name}`"
            )


def _degraded(
    prev: list[dict[str, Any]], resolved: Resolved, progress: _Progress, apply_error: str | None, gen: int
) -> Condition:
    replicas = resolved.spec.replicas
    if apply_error is not None:
        message = f"{apply_error}. The operator retries; check its RBAC and the events of this object."
        return _condition(prev, "Degraded", True, "ApplyFailed", message, gen)
    if resolved.unavailable:
        message = "; ".join(map(str, resolved.unavailable))
        return _condition(prev, "Degraded", True, "FeatureUnavailable", message, gen)
    if 0 < progress.ready_replicas < replicas and not progress.rolling:
        message = f"only {progress.ready_replicas}/{replicas} replicas ready; " + "; ".join(progress.waiting)
        return _condition(prev, "Degraded", True, "ReplicasUnavailable", message, gen)
    return _condition(prev, "Degraded", False, "AsExpected", "no problems detected", gen)


def compute_status(
    ref: ModelRef,
    resolved: Resolved,
    observed: Observed,
    generation: int,
    previous: dict[str, Any] | None,
    apply_error: str | None = None,
) -> dict[str, Any]:
    """Status from the spec and what the children report."""
    spec = resolved.spec
    prev = (previous or {}).get("conditions") or []
    progress = _Progress()
    _engine_progress(ref, resolved, observed, progress)
    _deployment_progress(ref, resolved, observed, progress)
    waiting, rolling = progress.waiting, progress.rolling
    all_ready = not waiting and apply_error is None
    gen = generation
    ready = _condition(
        prev,
        "Ready",
        all_ready,
        "AllReplicasReady" if all_ready else "WaitingForPods",
        f"{progress.ready_replicas}/{spec.replicas} replicas ready; clients connect to {observed.endpoint}"
        if all_ready
        else "; ".join(waiting) or (apply_error or ""),
        gen,
    )
    progressing = _condition(
        prev,
        "Progressing",
        bool(waiting) and apply_error is None,
        "RollingOut" if rolling else ("WaitingForPods" if waiting else "Complete"),
        ("rolling " + ", ".join(rolling))
        if rolling
        else ("waiting for pods to become ready" if waiting else "all children are up to date"),
        gen,
    )
    status = DuplexModelStatus(
        observed_generation=gen,
        conditions=[ready, progressing, _degraded(prev, resolved, progress, apply_error, gen)],
        replicas=spec.replicas,
        ready_replicas=progress.ready_replicas,
        selector=ref.engine_selector,
        shard_plan=shard_plan_status(resolved),
        endpoint=observed.endpoint,
        measured_turn_taking_p50_s=(previous or {}).get("measuredTurnTakingP50S"),
    )
    return dump(status)


def dump(status: DuplexModelStatus) -> dict[str, Any]:
    """camelCase dict for the status subresource (None fields dropped)."""
    out: dict[str, Any] = _drop_empty_strings(status.model_dump(mode="json", by_alias=True, exclude_none=True))
    return out


def _drop_empty_strings(node: Any) -> Any:
    # Kubernetes 1.20 validates "" in a custom resource as null against a string schema and rejects it.
    if isinstance(node, dict):
        return {k: _drop_empty_strings(v) for k, v in node.items() if v != ""}
    if isinstance(node, list):
        return [_drop_empty_strings(v) for v in node]
    return node


def same_status(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Equal apart from the fields the operator does not own."""
    keys = set(b) | set(a or {})
    keys.discard("measuredTurnTakingP50S")
    return all((a or {}).get(k) == b.get(k) for k in keys)


__all__ = ["DuplexModelStatus", "Observed", "compute_status", "invalid_status", "observe"]
