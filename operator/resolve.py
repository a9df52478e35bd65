"""From a raw ``DuplexModel`` spec to a resolved, checked one — or to the problems that stop it.

Checks the API server cannot make (Kubernetes 1.20 has no CEL): the preset exists, experts divide evenly
over shards, the model fits the declared memory, cross-field rules. ``shards: auto`` asks the size planner.
Every problem names the CRD field (camelCase path) an admin must change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal, cast

from kubernetes.utils import parse_quantity
from pydantic import ValidationError

from duplex.model.config import ModelConfig, ModelError, get_preset
from duplex.model.planner import GIB, ShardPlan, plan, valid_shard_counts

from .spec import DuplexModelSpec

_parse_quantity = cast(Callable[[str], Decimal], parse_quantity)


@dataclasses.dataclass(frozen=True)
class SpecProblem:
    """One reason a spec cannot be served: the field to change and what to do."""

    field: str
    """CRD path, e.g. ``spec.engine.shards``."""
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidSpec(ValueError):
    def __init__(self, problems: list[SpecProblem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A spec that can be served, with its shard count decided."""

    spec: DuplexModelSpec
    config: ModelConfig
    shards: int
    shards_source: Literal["spec", "planner"]
    plan: ShardPlan | None
    """The planner's answer for the declared memory (also for explicit shard counts, when it fits)."""
    memory_gib_per_rank: float
    unavailable: tuple[SpecProblem, ...] = ()
    """Fields asking for something this version renders but cannot run yet: served, with ``Degraded``."""


def parse_spec(raw: dict[str, Any] | None) -> DuplexModelSpec:
    """Parse the object's spec; pydantic errors become problems naming the camelCase field."""
    try:
        return DuplexModelSpec.from_k8s(raw)
    except ValidationError as e:
        problems = [
            # locations are the camelCase aliases the object used (unknown keys: as written)
            SpecProblem(".".join(["spec", *(p if isinstance(p, str) else f"[{p}]" for p in err["loc"])]), err["msg"])
            for err in e.errors()
        ]
        raise InvalidSpec(problems) from None


def image_tag(image: str) -> str | None:
    """The tag of an image reference (``registry:5000/team/duplex:0.1.0`` -> ``0.1.0``); None without one.
    A digest (``...@sha256:...``) pins the image whatever the tag, so it counts as pinned."""
    if "@" in image:
        return image.rsplit("@", 1)[1]
    last = image.rsplit("/", 1)[-1]  # a registry's port is before the last slash, a tag after it
    return last.split(":", 1)[1] if ":" in last else None


def unpinned_images(spec: DuplexModelSpec) -> list[SpecProblem]:
    """Images the pods would pull without a pinned tag: what a node runs would change under the spec."""
    images = [("spec.engine.image", spec.engine.image)]
    if spec.agent.workers > 0 and spec.agent.redis.managed:
        images.append(("spec.agent.redis.image", spec.agent.redis.image))
    problems = []
    for field, image in images:
        tag = image_tag(image)
        if not tag or tag == "latest":
            repository = image[: -len(tag) - 1] if tag else image
            problems.append(
                SpecProblem(
                    field,
                    f"image {image!r} has no pinned tag: name a version tag (e.g. {repository}:1.2.3)"
                    " or a digest, not latest or none",
                )
            )
    return problems


GATEWAY_FILE_FIELDS = {
    "api_keys_file": ("apiKeysFile", "authSecret"),
    "tls_cert_file": ("tlsCertFile", "tlsSecret"),
    "tls_key_file": ("tlsKeyFile", "tlsSecret"),
    "client_ca_file": ("clientCaFile", "clientCaSecret"),
}
"""Gateway file paths the operator sets from mounted Secrets: in a DuplexModel they would point at nothing."""


def gateway_file_problems(spec: DuplexModelSpec) -> list[SpecProblem]:
    gw = spec.gateway
    problems = [
        SpecProblem(f"spec.gateway.{field}", f"a path inside the pod is set by the operator: use spec.gateway.{secret}")
        for name, (field, secret) in GATEWAY_FILE_FIELDS.items()
        if getattr(gw, name)
    ]
    if gw.client_ca_secret and not gw.tls_secret:
        problems.append(SpecProblem("spec.gateway.clientCaSecret", "mutual TLS needs TLS: set spec.gateway.tlsSecret"))
    return problems


def _rank_memory_gib(spec: DuplexModelSpec) -> tuple[float, str]:
    """Memory one rank may use, and the field that declares it."""
    eng = spec.engine
    if eng.gpus_per_shard > 0:
        return eng.gpu_memory_gib * eng.gpus_per_shard, "spec.engine.gpuMemoryGib"
    return float(_parse_quantity(eng.resources.memory)) / GIB, "spec.engine.resources.memory"


def resolve(spec: DuplexModelSpec) -> Resolved:
    """Check ``spec`` and decide the shard count; raises :class:`InvalidSpec` listing every problem."""
    problems: list[SpecProblem] = []
    eng = spec.engine
    try:
        cfg = get_preset(spec.model.preset)
    except ModelError as e:
        raise InvalidSpec([SpecProblem("spec.model.preset", str(e))]) from None
    if spec.model.dtype != cfg.dtype:
        cfg = cfg.model_copy(update={"dtype": spec.model.dtype})
    try:
        cfg.frames_per_chunk(eng.chunk_ms)
    except ModelError as e:
        problems.append(SpecProblem("spec.engine.chunkMs", str(e)))
    if eng.backend == "tensorrt-llm":
        # Rejected, not rendered: no engine reads the backend yet, so an engine "on tensorrt-llm" would pretend.
        problems.append(
            SpecProblem(
                "spec.engine.backend",
                "backend tensorrt-llm is not available in this version (no engine reads it yet): set backend to torch",
            )
        )
    problems += unpinned_images(spec)
    problems += gateway_file_problems(spec)
    if eng.device == "cpu" and eng.gpus_per_shard > 0:
        problems.append(
            SpecProblem(
                "spec.engine.device",
                "device cpu with gpusPerShard > 0 wastes the GPUs: set device to auto or cuda, or gpusPerShard to 0",
            )
        )
    auto = spec.autoscaling
    if auto.enabled and auto.min_replicas > auto.max_replicas:
        problems.append(
            SpecProblem(
                "spec.autoscaling.maxReplicas",
                f"maxReplicas ({auto.max_replicas}) is below minReplicas ({auto.min_replicas})",
            )
        )
    if spec.slo.turn_taking_p95_s < spec.slo.turn_taking_p50_s:
        problems.append(SpecProblem("spec.slo.turnTakingP95S", "the p95 target is below the p50 target"))
    redis = spec.agent.redis
    if spec.agent.workers > 0 and not redis.managed and not (redis.url or redis.url_secret):
        problems.append(
            SpecProblem(
                "spec.agent.redis",
                "managed is false: set url or urlSecret for the external Redis, or set managed to true",
            )
        )
    if redis.url and redis.url_secret:
        problems.append(SpecProblem("spec.agent.redis.urlSecret", "set either url or urlSecret, not both"))
    try:
        memory_gib, memory_field = _rank_memory_gib(spec)
    except ValueError as e:
        raise InvalidSpec([*problems, SpecProblem("spec.engine.resources.memory", str(e))]) from None

    fitted: ShardPlan | None = None
    fit_error: str | None = None
    try:
        fitted = plan(cfg, memory_gib, sessions=eng.max_sessions)
    except ModelError as e:
        fit_error = str(e)

    source: Literal["spec", "planner"]
    if eng.shards == "auto":
        if fit_error is not None:
            problems.append(SpecProblem(memory_field, f"shards: auto found no shard count: {fit_error}"))
        shards, source = (fitted.shards if fitted else 1), "planner"
    else:
        shards, source = eng.shards, "spec"
        if shards < 1:
            problems.append(SpecProblem("spec.engine.shards", "must be at least 1 (or auto)"))
        elif cfg.n_experts % shards:
            counts = ", ".join(map(str, valid_shard_counts(cfg)))
            problems.append(
                SpecProblem(
                    "spec.engine.shards",
                    f"{cfg.n_experts} experts of preset "
                    f"{cfg.name!r} are not divisible by {shards} shards; use one of {counts}",
                )
            )
        elif fit_error is not None:
            problems.append(SpecProblem(memory_field, fit_error))
        elif fitted is not None and shards < fitted.shards:
            problems.append(
                SpecProblem(
                    "spec.engine.shards",
                    f"model {cfg.name!r} with {eng.max_sessions} sessions "
                    f"does not fit {memory_gib:g} GiB per rank at {shards} shards; it needs at "
                    f"least {fitted.shards} (or set shards: auto)",
                )
            )
    if problems:
        raise InvalidSpec(problems)
    return Resolved(
        spec=spec,
        config=cfg,
        shards=shards,
        shards_source=source,
        plan=fitted,
        memory_gib_per_rank=memory_gib,
    )
