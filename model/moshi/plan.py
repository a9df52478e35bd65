"""How many Moshi-family sessions a GPU holds: weights + sessions × (KV cache and streaming state).

Parameter counts come from the upstream modules built on the ``meta`` device (exact, no memory), so the plan
works for the published 7B shape without its weights. Per session, the temporal transformer's KV cache is
preallocated by upstream's ring cache for the whole context (``context`` frames): 2 (K and V) × layers ×
dim × bytes per frame — 512 KiB per frame for Moshi-7B in bfloat16, 1.5 GiB for its 3000-frame window. The
depformer's cache (``depformer_context`` steps) and Mimi's (its encoder and decoder transformers, float32)
are small and counted too. Compute per frame ≈ 2 × LM parameters (every weight is used once per frame: the
depformer's per-step weights once per codebook) + the attention over the window. Hibiki with classifier-free
guidance runs each session as two LM rows (``lm_rows_per_session`` 2): twice the LM's caches and compute, one
Mimi.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from ..config import ModelError
from .layout import detect
from .upstream import upstream_loaders

GIB = 1024**3


class MoshiPlan(BaseModel):
    """A Moshi-family replica on one GPU."""

    model_config = ConfigDict(frozen=True)

    lm_params: int
    """Parameters of the LM (temporal transformer + depformer)."""
    mimi_params: int
    """Parameters of the Mimi codec."""
    weight_bytes: int
    """LM weights in the serving dtype + Mimi in float32."""
    context_frames: int
    """Frames the KV cache holds (the attention window; 80 ms each)."""
    kv_bytes_per_frame: int
    """Temporal transformer KV per frame per session."""
    session_bytes: int
    """Per session: the full-window KV cache + the depformer's and Mimi's streaming caches."""
    gflop_per_frame: float
    """Compute per frame per session with a full window."""
    sessions: int
    """Sessions that fit next to the weights and the headroom (0 = the weights alone do not fit)."""
    lm_rows_per_session: int = 1
    """LM rows each session runs as (2: Hibiki with classifier-free guidance)."""
    gpu_memory_gib: float
    headroom_bytes: int
    """Kept free for activations, CUDA graphs and the allocator."""


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def plan_moshi(
    lm_config: dict[str, Any] | None,
    mimi_config: dict[str, Any] | None = None,
    gpu_memory_gib: float = 80.0,
    dtype: torch.dtype = torch.bfloat16,
    context: int | None = None,
    headroom: float = 0.1,
    lm_rows_per_session: int = 1,
) -> MoshiPlan:
    """Plan a replica of the LM with ``lm_config`` (None = upstream's Moshi-7B arguments), each session running
    as ``lm_rows_per_session`` LM rows (2: classifier-free guidance)."""
    if lm_rows_per_session not in (1, 2):
        raise ModelError(f"lm_rows_per_session {lm_rows_per_session}: 1, or 2 with classifier-free guidance")
    if not 0.0 <= headroom < 1.0:
        raise ModelError(f"headroom {headroom}: must be in [0, 1)")
    if gpu_memory_gib <= 0:
        raise ModelError(f"gpu_memory_gib {gpu_memory_gib}: must be positive")
    loaders = upstream_loaders()
    args = dict(loaders._lm_kwargs if lm_config is None else lm_config)
    mimi_args = loaders._mimi_config if mimi_config is None else mimi_config
    missing = [k for k in ("dim", "num_layers", "context") if k not in args]
    if missing:
        raise ModelError(f"config.json: no {missing[0]!r} (not Moshi LM arguments)")
    try:  # upstream's own constructor path (it maps conditioners, fusers and renamed arguments)
        lm = loaders.get_moshi_lm(None, lm_kwargs=args, device="meta", dtype=dtype)
    except (TypeError, ValueError, KeyError, AssertionError) as e:  # upstream checks its arguments by assert
        raise ModelError(f"config.json: not Moshi LM arguments ({type(e).__name__}: {e})") from e
    mimi = loaders.get_mimi(None, mimi_config=mimi_args, device="meta")
    lm_params, mimi_params = _count(lm), _count(mimi)
    size = torch.tensor([], dtype=dtype).element_size()
    window = int(args["context"] if context is None else context)
    if window < 1:
        raise ModelError(f"context {window}: must be at least one frame")
    layers, dim = int(args["num_layers"]), int(args["dim"])
    kv_frame = 2 * layers * dim * size
    depformer = 2 * int(args.get("depformer_num_layers", 0)) * int(args.get("depformer_context", 8))
    depformer *= int(args.get("depformer_dim", 0)) * size
    tr = mimi_args["transformer"]
    mimi_kv = 2 * 2 * int(tr["num_layers"]) * int(tr["context"]) * int(tr["d_model"]) * 4  # encoder + decoder
    per_session = lm_rows_per_session * (kv_frame * window + depformer) + mimi_kv
    weights = lm_params * size + mimi_params * 4
    total = int(gpu_memory_gib * GIB)
    spare = int(total * headroom)
    sessions = max(0, (total - spare - weights) // per_session)
    flops = lm_rows_per_session * (2 * lm_params + 4 * layers * window * dim)
    return MoshiPlan(
        lm_params=lm_params,
        mimi_params=mimi_params,
        weight_bytes=weights,
        context_frames=window,
        kv_bytes_per_frame=kv_frame,
        session_bytes=per_session,
        gflop_per_frame=flops / 1e9,
        sessions=int(sessions),
        lm_rows_per_session=lm_rows_per_session,
        gpu_memory_gib=gpu_memory_gib,
        headroom_bytes=spare,
    )


def read_configs(directory: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(LM arguments, Mimi config) of a checkpoint directory (None = upstream's published shapes), with the
    checkpoint's own errors naming what is missing."""
    layout = detect(directory)
    mimi = json.loads(layout.mimi_config_path.read_text()) if layout.mimi_config_path is not None else None
    return layout.lm_config, mimi


def describe(plan: MoshiPlan) -> str:
    """One paragraph for the CLI."""
    kib = plan.kv_bytes_per_frame / 1024
    return (
        f"LM {plan.lm_params / 1e9:.2f} B + Mimi {plan.mimi_params / 1e6:.0f} M parameters = "
        f"{plan.weight_bytes / GIB:.2f} GiB of weights; per session {plan.session_bytes / GIB:.3f} GiB "
        f"(KV {kib:.0f} KiB per frame × {plan.context_frames} frames, {plan.context_frames * 0.08:.0f} s); "
        f"≈ {plan.gflop_per_frame:.1f} GFLOP per frame per session. "
        + ("With guidance: two LM rows per session. " if plan.lm_rows_per_session == 2 else "")
        + f"{plan.sessions} full-window sessions fit in {plan.gpu_memory_gib:g} GiB "
        f"(headroom {plan.headroom_bytes / GIB:.1f} GiB)."
    )
