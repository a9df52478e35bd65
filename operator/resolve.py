"""From a raw ``DuplexModel`` spec to a resolved, checked one — or to the problems that stop it.

Checks the API server cannot make (Kubernetes 1.20 has no CEL): the model family, the preset exists, experts
divide evenly over shards, the model fits the declared memory, the checkpoint volume, cross-field rules.
``shards: auto`` asks the size planner (``duplex`` family); a Moshi-family model runs on one rank, and on GPUs
``maxSessions`` is checked against the Moshi session plan. Every problem names the CRD field (camelCase path)
an admin must change.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import posixpath
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal, cast

import torch
from kubernetes.utils import parse_quantity
from pydantic import ValidationError

from duplex.model.config import ModelConfig, ModelError, get_preset
from duplex.model.moshi import CHUNKS_MS, FRAME_MS
from duplex.model.moshi.plan import MoshiPlan, plan_moshi
from duplex.model.planner import GIB, ShardPlan, plan, valid_shard_counts
from duplex.serving.picker.cli import PICKER_HTTP_PORT, PICKER_PORT

from .naming import CONFIG_DIR
from .spec import DuplexModelSpec

log = logging.getLogger(__name__)

_parse_quantity = cast(Callable[[str], Decimal], parse_quantity)

Family = Literal["duplex", "moshi", "personaplex", "hibiki"]
MOSHI_FAMILIES: tuple[Family, ...] = ("moshi", "personaplex", "hibiki")
"""Families served from a Kyutai-layout checkpoint directory with the upstream ``moshi`` package."""
ENGINE_PATHS = (CONFIG_DIR, "/tmp", "/dev/shm")
"""Paths the engine container mounts already (config, scratch, shared memory): no checkpoint volume there."""


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
    """A spec that can be served, with its model family and shard count decided."""

    spec: DuplexModelSpec
    config: ModelConfig | None
    """The ``duplex`` preset's architecture in the spec's dtype; None for the Moshi family."""
    shards: int
    shards_source: Literal["spec", "planner"]
    plan: ShardPlan | None
    """The ``duplex`` size planner's answer for the declared memory (also for explicit shard counts, when it
    fits); None for the Moshi family."""
    memory_gib_per_rank: float
    family: Family = "duplex"
    """The family the engines serve: ``spec.model.family``, or for ``auto`` decided by the uri's suffix."""
    moshi_plan: MoshiPlan | None = None
    """Moshi family on GPUs: sessions of the published 7B shape that fit the declared GPU memory. None on CPU,
    for ``duplex``, or when the operator's image lacks the upstream ``moshi`` package (the check is skipped)."""
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


def front_port_problems(spec: DuplexModelSpec) -> list[SpecProblem]:
    """The front pod's ports are distinct: Envoy's gRPC and HTTP listeners, the picker's metrics, and the picker's
    own loopback ports (its ext_authz service and HTTP app), which a listener would take from it."""
    gw = spec.gateway
    taken = {PICKER_PORT: "the session picker's own port", PICKER_HTTP_PORT: "the session picker's HTTP app"}
    problems = []
    for field, port in (("port", gw.port), ("httpPort", gw.http_port), ("metricsPort", gw.metrics_port)):
        if not port:
            continue
        if port in taken:
            problems.append(SpecProblem(f"spec.gateway.{field}", f"{port} is already {taken[port]} in the front pod"))
        else:
            taken[port] = f"spec.gateway.{field}"
    return problems


def common_problems(spec: DuplexModelSpec) -> list[SpecProblem]:
    """Problems whatever the model family: backend, images, gateway files, device, autoscaling, SLO, Redis,
    checkpoint volume."""
    problems: list[SpecProblem] = []
    eng = spec.engine
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
    gw = spec.gateway
    if 0 < gw.max_replicas < gw.replicas:
        problems.append(
            SpecProblem(
                "spec.gateway.maxReplicas",
                f"maxReplicas ({gw.max_replicas}) is below replicas ({gw.replicas}), the fewest front pods; "
                "0 turns the front's autoscaling off",
            )
        )
    problems += front_port_problems(spec)
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
    return problems + checkpoint_problems(spec)


def _overlaps(a: str, b: str) -> bool:
    """Is one of two normalized absolute paths the other or inside it?"""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def checkpoint_problems(spec: DuplexModelSpec) -> list[SpecProblem]:
    """The checkpoint volume: at most one source, mounted where the engine container has nothing else."""
    ck = spec.checkpoint
    if ck.claim_name and ck.host_path:
        return [SpecProblem("spec.checkpoint.hostPath", "set either claimName or hostPath, not both")]
    if not (ck.claim_name or ck.host_path):
        return []
    problems = []
    mount = posixpath.normpath(ck.mount_path)
    if any(_overlaps(mount, used) for used in ENGINE_PATHS):
        problems.append(
            SpecProblem(
                "spec.checkpoint.mountPath",
                f"{ck.mount_path!r} overlaps a path the engine container already mounts "
                f"({', '.join(ENGINE_PATHS)}): choose another, e.g. /models",
            )
        )
    if ck.host_path and not posixpath.isabs(ck.host_path):
        problems.append(SpecProblem("spec.checkpoint.hostPath", f"{ck.host_path!r}: must be an absolute node path"))
    return problems


def uri_problems(spec: DuplexModelSpec, family: Family) -> list[SpecProblem]:
    """``spec.model.uri``: a local path in the pod, under the checkpoint volume when one is mounted."""
    raw = spec.model.uri or ""
    uri = raw.removeprefix("file://")
    ck = spec.checkpoint
    volume = bool(ck.claim_name or ck.host_path)
    mount = posixpath.normpath(ck.mount_path)
    if "://" in uri:
        why = "only paths inside the pod are read: mount the checkpoint (spec.checkpoint) and point uri into it"
        return [SpecProblem("spec.model.uri", f"{raw!r}: {why}")]
    if not uri and family in MOSHI_FAMILIES:
        where = f" (under {mount}, where spec.checkpoint mounts it)" if volume else " (e.g. on spec.checkpoint)"
        why = f"a {family} model needs the path of its checkpoint directory inside the pod{where}"
        return [SpecProblem("spec.model.uri", why)]
    if not volume:
        return []
    if not uri:
        why = "empty while spec.checkpoint mounts a volume: the engine would never read it; set the checkpoint's path"
        return [SpecProblem("spec.model.uri", f"{why} under {mount}")]
    path = posixpath.normpath(uri)
    if not posixpath.isabs(path) or not (path == mount or path.startswith(mount.rstrip("/") + "/")):
        why = f"{raw!r} is not under spec.checkpoint.mountPath ({mount}), where the engine pods see the volume"
        return [SpecProblem("spec.model.uri", why)]
    return []


def model_family(spec: DuplexModelSpec) -> tuple[Family | None, list[SpecProblem]]:
    """The family the engines will serve. ``auto`` decides by the engine's filesystem, which the operator
    cannot see: no uri or a ``.safetensors`` file is ``duplex``; anything else must name its family."""
    m = spec.model
    if m.family != "auto":
        return m.family, []
    uri = (m.uri or "").removeprefix("file://")
    if not uri or uri.endswith(".safetensors"):
        return "duplex", []
    return None, [
        SpecProblem(
            "spec.model.family",
            f"auto with uri {m.uri!r}: the operator cannot look inside the pod's volume to tell a Moshi-family "
            "checkpoint directory from a duplex file; name the family (duplex, moshi or personaplex)",
        )
    ]


def resolve(spec: DuplexModelSpec) -> Resolved:
    """Check ``spec``, decide its family and shard count; raises :class:`InvalidSpec` listing every problem."""
    problems = common_problems(spec)
    family, family_problems = model_family(spec)
    problems += family_problems
    if family is not None:
        problems += uri_problems(spec, family)
    try:
        memory_gib, memory_field = _rank_memory_gib(spec)
    except ValueError as e:
        raise InvalidSpec([*problems, SpecProblem("spec.engine.resources.memory", str(e))]) from None
    if family is None:
        raise InvalidSpec(problems)
    if family == "duplex":
        return _resolve_duplex(spec, memory_gib, memory_field, problems)
    return _resolve_moshi(spec, family, memory_gib, memory_field, problems)


# --- the duplex family --------------------------------------------------------------------------------


def _resolve_duplex(
    spec: DuplexModelSpec, memory_gib: float, memory_field: str, problems: list[SpecProblem]
) -> Resolved:
    """The in-repo model: preset, frames per chunk, expert-parallel shards against the size planner."""
    eng = spec.engine
    try:
        cfg = get_preset(spec.model.preset)
    except ModelError as e:
        raise InvalidSpec([*problems, SpecProblem("spec.model.preset", str(e))]) from None
    if spec.model.dtype != cfg.dtype:
        cfg = cfg.model_copy(update={"dtype": spec.model.dtype})
    try:
        cfg.frames_per_chunk(eng.chunk_ms)
    except ModelError as e:
        problems.append(SpecProblem("spec.engine.chunkMs", str(e)))
    moshi_only = (("temperature", spec.model.temperature), ("topK", spec.model.top_k), ("cfgCoef", spec.model.cfg_coef))
    for field, value in moshi_only:
        if value is not None:
            why = "applies to the Moshi family; the duplex model decides greedily (the engine refuses it): unset it"
            problems.append(SpecProblem(f"spec.model.{field}", why))
    problems += _prompt_problems(spec, "duplex")
    fitted: ShardPlan | None = None
    fit_error: str | None = None
    try:
        fitted = plan(cfg, memory_gib, sessions=eng.max_sessions)
    except ModelError as e:
        fit_error = str(e)
    shards, source = _duplex_shards(spec, cfg, memory_gib, memory_field, fitted, fit_error, problems)
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


def _duplex_shards(
    spec: DuplexModelSpec,
    cfg: ModelConfig,
    memory_gib: float,
    memory_field: str,
    fitted: ShardPlan | None,
    fit_error: str | None,
    problems: list[SpecProblem],
) -> tuple[int, Literal["spec", "planner"]]:
    """The shard count (the planner's for ``auto``); appends to ``problems`` what makes it unusable."""
    eng = spec.engine
    if eng.shards == "auto":
        if fit_error is not None:
            problems.append(SpecProblem(memory_field, f"shards: auto found no shard count: {fit_error}"))
        return (fitted.shards if fitted else 1), "planner"
    shards = eng.shards
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
    return shards, "spec"


# --- the Moshi family ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _moshi_7b_plan(gpu_memory_gib: float, dtype: str) -> MoshiPlan:
    # Deterministic, and ~2 s (upstream modules built on the meta device): once per (memory, dtype).
    return plan_moshi(None, gpu_memory_gib=gpu_memory_gib, dtype=getattr(torch, dtype))


def moshi_session_plan(gpu_memory_gib: float, dtype: str) -> MoshiPlan | None:
    """The published Moshi-7B shape's session plan for one replica's GPU memory; None when the operator's
    image cannot build it (no upstream ``moshi`` package): the check is skipped, with a warning."""
    try:
        return _moshi_7b_plan(gpu_memory_gib, dtype)
    except ModelError as e:
        log.warning("maxSessions of a Moshi-family model not checked: %s", e)
        return None


def moshi_capacity_problems(moshi: MoshiPlan, max_sessions: int, dtype: str, memory_field: str) -> list[SpecProblem]:
    """``maxSessions`` full-window sessions next to the weights, within the declared GPU memory."""
    memory = f"{moshi.gpu_memory_gib:g} GiB"
    weights = f"{moshi.weight_bytes / GIB:.1f} GiB of Moshi-7B weights in {dtype}"
    if moshi.sessions == 0:
        why = f"{weights} leave no room for a full-window session in {memory}: give the replica more GPU memory"
        return [SpecProblem(memory_field, why)]
    if max_sessions > moshi.sessions:
        why = (
            f"{max_sessions} full-window Moshi-7B sessions ({moshi.session_bytes / GIB:.2f} GiB of caches each, "
            f"next to {weights}) do not fit {memory}: at most {moshi.sessions}"
        )
        return [SpecProblem("spec.engine.maxSessions", why)]
    return []


def _prompt_problems(spec: DuplexModelSpec, family: Family) -> list[SpecProblem]:
    """``voice`` and ``persona`` are PersonaPlex's session prompt: refused for other families (the voice's name
    is checked against the checkpoint's ``voices/`` by the engine at load)."""
    if family == "personaplex":
        return []
    return [
        SpecProblem(f"spec.model.{field}", f"applies to PersonaPlex; a {family} model takes no {field}: unset it")
        for field, value in (("voice", spec.model.voice), ("persona", spec.model.persona))
        if value
    ]


def _resolve_moshi(
    spec: DuplexModelSpec, family: Family, memory_gib: float, memory_field: str, problems: list[SpecProblem]
) -> Resolved:
    """Moshi, PersonaPlex, Hibiki: one rank per replica, whole frames per chunk, sessions per GPU (checked
    against the Moshi-7B plan; Hibiki's shape is its checkpoint's, which the operator does not read)."""
    eng = spec.engine
    if spec.model.cfg_coef is not None and family != "hibiki":
        why = f"applies to Hibiki (classifier-free guidance); a {family} model has no conditioner: unset it"
        problems.append(SpecProblem("spec.model.cfgCoef", why))
    if eng.shards not in ("auto", 1):
        why = f"{eng.shards}: a Moshi-family model runs on one rank; set shards to 1 (or auto)"
        problems.append(SpecProblem("spec.engine.shards", why))
    if eng.chunk_ms not in CHUNKS_MS:
        choices = ", ".join(map(str, CHUNKS_MS))
        why = (
            f"{eng.chunk_ms} ms is not a whole number of the Moshi family's {FRAME_MS} ms frames: use one of {choices}"
        )
        problems.append(SpecProblem("spec.engine.chunkMs", why))
    problems += _prompt_problems(spec, family)
    if (spec.model.uri or "").endswith(".safetensors"):
        why = f"a {family} checkpoint is a directory in Kyutai's layout (docs/moshi.md), not a .safetensors file"
        problems.append(SpecProblem("spec.model.uri", why))
    moshi: MoshiPlan | None = None
    if eng.gpus_per_shard > 0 and family != "hibiki":  # on CPU there is no fixed budget to plan against
        moshi = moshi_session_plan(memory_gib, spec.model.dtype)
        if moshi is not None:
            problems += moshi_capacity_problems(moshi, eng.max_sessions, spec.model.dtype, memory_field)
    if problems:
        raise InvalidSpec(problems)
    return Resolved(
        spec=spec,
        config=None,
        shards=1,
        shards_source="planner" if eng.shards == "auto" else "spec",
        plan=None,
        memory_gib_per_rank=memory_gib,
        family=family,
        moshi_plan=moshi,
    )
