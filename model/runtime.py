"""Build the model a serving process runs, from a ``ModelSource`` (checkpoint, shipped default, or random)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .config import ModelError, get_preset
from .model import DuplexModel, ExpertShard, expert_range
from .moe import MoeImpl
from .spec import ModelSource

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "checkpoints"
"""Reference checkpoints trained by this repository's own scripts (``<preset>.safetensors``)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


def checkpoint_path(source: ModelSource) -> Path | None:
    """The checkpoint to load: the source's uri, else the shipped one for its preset, else None (random)."""
    if source.uri:
        uri = source.uri.removeprefix("file://")
        if "://" in uri:
            raise ModelError(f"model.uri {source.uri!r}: only local paths are supported (mount the checkpoint)")
        return Path(uri)
    shipped = SHIPPED / f"{source.preset}.safetensors"
    return shipped if shipped.is_file() else None


def load_part(
    source: ModelSource, rank: int = 0, world_size: int = 1, device: str = "auto", impl: MoeImpl = "grouped"
) -> nn.Module:
    """This rank's part of the model, in eval mode: ``DuplexModel`` on rank 0, ``ExpertShard`` on the others."""
    cfg = get_preset(source.preset)
    dev = resolve_device(device)
    dtype = getattr(torch, source.dtype)
    path = checkpoint_path(source)
    if path is not None:
        module = checkpoint.load(path, rank, world_size, expected=cfg, impl=impl, device=dev, dtype=dtype)
    else:
        log.warning(
            "no checkpoint for preset %r: serving RANDOM weights (seed %d) — the model will not "
            "take turns meaningfully",
            source.preset,
            source.seed,
        )
        torch.manual_seed(source.seed)
        full = DuplexModel(cfg, impl=impl)  # same init on every rank, so shards of it agree
        if rank == 0 and world_size == 1:
            module = full
        else:
            first, n = expert_range(cfg, rank, world_size)
            module = DuplexModel(cfg, (first, n), impl) if rank == 0 else ExpertShard(cfg, (first, n), impl)
            state = {k: (v[first : first + n] if ".moe.experts." in k else v) for k, v in full.state_dict().items()}
            module.load_state_dict({k: state[k] for k in module.state_dict()})
        module = module.to(device=dev, dtype=dtype)
    return module.eval()
