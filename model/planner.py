"""Analytic parameter counts and the shard planner used by the CLI and the operator.

Counts are computed from the config alone (no tensors), so they work for the 276B planning preset; for a
preset small enough to build, tests check them against the real modules to the byte.

Placement in a replica of N shards (expert parallelism): rank 0 holds every dense weight (embeddings,
attention, routers, shared experts, heads), the KV caches of all sessions, and experts [0, E/N); rank r>0
holds only experts [r*E/N, (r+1)*E/N). Rank 0 is therefore the largest shard and sets the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from .config import ModelConfig, ModelError
from .embed import N_MELS

GIB = 1024**3


@dataclass(frozen=True)
class ParamCount:
    total: int
    active: int
    """Parameters touched per token: all dense weights (embeddings included) + top_k experts per layer."""
    dense: int
    per_expert: int
    """One routed expert of one layer."""

    @property
    def experts(self) -> int:
        return self.total - self.dense


def count_params(cfg: ModelConfig) -> ParamCount:
    d, L = cfg.d_model, cfg.n_layers
    embed = cfg.frame_samples * d + (N_MELS + 1) * d + d  # raw projection; feature projection + bias
    embed += (cfg.audio_codes + 1) * d + cfg.text_vocab * d + (cfg.control_classes + 1) * d  # own outputs
    if cfg.text_in_slots:
        embed += cfg.text_vocab * d + cfg.text_in_slots * d
    if cfg.video_size:
        embed += 3 * cfg.video_patch**2 * d + d + cfg.video_patches * d
    attn = 2 * d * cfg.n_heads * cfg.head_dim + 2 * d * cfg.n_kv_heads * cfg.head_dim
    layer_dense = 2 * d + attn + d * cfg.n_experts + 3 * d * cfg.shared_expert_hidden
    heads = d * (cfg.audio_codes + cfg.text_vocab + cfg.control_classes) + (cfg.text_vocab if cfg.text_words else 0)
    dense = embed + L * layer_dense + d + heads
    per_expert = 3 * d * cfg.expert_hidden
    total = dense + L * cfg.n_experts * per_expert
    return ParamCount(total=total, active=dense + L * cfg.top_k * per_expert, dense=dense, per_expert=per_expert)


def valid_shard_counts(cfg: ModelConfig) -> list[int]:
    """Shard counts that split the experts evenly."""
    return [n for n in range(1, cfg.n_experts + 1) if cfg.n_experts % n == 0]


def shard_weight_bytes(cfg: ModelConfig, shards: int, rank: int) -> int:
    """Bytes of the weights rank ``rank`` of ``shards`` loads."""
    if cfg.n_experts % shards:
        raise ModelError(f"n_experts ({cfg.n_experts}) is not divisible by shards ({shards})")
    pc = count_params(cfg)
    expert_params = cfg.n_layers * (cfg.n_experts // shards) * pc.per_expert
    return (expert_params + (pc.dense if rank == 0 else 0)) * cfg.dtype_bytes


def kv_bytes_per_session(cfg: ModelConfig) -> int:
    """Ring KV cache (both K and V, every layer) plus the small per-slot bookkeeping."""
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.cache_len * cfg.head_dim * cfg.dtype_bytes
    return kv + 8 * (cfg.cache_len + 1 + (3 + len(cfg.agenda_classes)) * cfg.feedback_delay_frames)


class ShardPlan(BaseModel):
    """The smallest shard group that fits a model on GPUs of a given size."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    preset: str
    shards: int
    """Ranks in one replica (world size)."""
    experts_per_shard: int
    bytes_per_shard: int
    """Bytes the largest shard (rank 0) needs: its weights + KV caches for ``sessions`` (headroom excluded)."""
    weight_bytes_per_shard: list[int]
    """Weight bytes of each rank."""
    kv_bytes: int
    """KV cache bytes for all sessions (held by rank 0)."""
    headroom_bytes: int
    """Kept free per GPU for activations, workspace and fragmentation."""
    gpu_memory_bytes: int
    sessions: int
    total_params: int
    active_params: int


def plan(cfg: ModelConfig, gpu_memory_gib: float, sessions: int = 1, headroom_fraction: float = 0.1) -> ShardPlan:
    """Smallest N (dividing n_experts) with rank-0 weights + KV(sessions) + headroom <= gpu_memory."""
    if gpu_memory_gib <= 0:
        raise ModelError(f"gpu_memory_gib must be positive, got {gpu_memory_gib}")
    if sessions < 1:
        raise ModelError(f"sessions must be at least 1, got {sessions}")
    if not 0 <= headroom_fraction < 1:
        raise ModelError(f"headroom_fraction must be in [0, 1), got {headroom_fraction}")
    gpu = int(gpu_memory_gib * GIB)
    headroom = int(gpu * headroom_fraction)
    kv = sessions * kv_bytes_per_session(cfg)
    pc = count_params(cfg)
    for n in valid_shard_counts(cfg):
        need = shard_weight_bytes(cfg, n, 0) + kv
        if need + headroom <= gpu:
            return ShardPlan(
                preset=cfg.name,
                shards=n,
                experts_per_shard=cfg.n_experts // n,
                bytes_per_shard=need,
                weight_bytes_per_shard=[shard_weight_bytes(cfg, n, r) for r in range(n)],
                kv_bytes=kv,
                headroom_bytes=headroom,
                gpu_memory_bytes=gpu,
                sessions=sessions,
                total_params=pc.total,
                active_params=pc.active,
            )
    smallest = shard_weight_bytes(cfg, cfg.n_experts, 0) + kv + headroom
    raise ModelError(
        f"model {cfg.name!r} does not fit {gpu_memory_gib} GiB GPUs with {sessions} sessions even at "
        f"{cfg.n_experts} shards (rank 0 needs {smallest / GIB:.1f} GiB incl. headroom): "
        "use larger GPUs, fewer sessions per replica or a smaller dtype"
    )
