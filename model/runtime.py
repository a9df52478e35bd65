"""Build the model a serving process runs, from a ``ModelSource`` (checkpoint, shipped default, or random)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint
from .config import ModelError, get_preset
from .family import ServedModel
from .family_duplex import DuplexServed
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


UPSTREAM_TEMP, UPSTREAM_TOP_K = 0.8, 250
"""Upstream ``LMGen``'s sampling defaults, for a checkpoint whose config.json has no ``lm_gen_config``."""


def is_moshi_layout(source: ModelSource) -> bool:
    """Does the source name a Moshi-family checkpoint (by family, or a directory ``uri`` under ``auto``)?"""
    if source.family in ("moshi", "personaplex", "hibiki"):
        return True
    if source.family == "duplex" or not source.uri:
        return False
    return Path(source.uri.removeprefix("file://")).is_dir()


def load_served(source: ModelSource, device: str = "auto") -> ServedModel[Any]:
    """The model a single-rank engine serves, behind the engine's ``ServedModel`` interface."""
    if not is_moshi_layout(source):
        if source.temperature is not None or source.top_k is not None or source.cfg_coef is not None:
            raise ModelError(
                "model.temperature / model.top_k / model.cfg_coef apply to the Moshi family; the duplex model "
                "decides greedily"
            )
        if source.voice or source.persona:
            raise ModelError("model.voice / model.persona apply to PersonaPlex; the duplex model takes neither")
        part = load_part(source, device=device)
        assert isinstance(part, DuplexModel)
        return DuplexServed(part)
    if not source.uri:
        raise ModelError(f"model.family {source.family!r} needs model.uri: the checkpoint directory")
    from .moshi.checkpoint import load_checkpoint
    from .moshi.hibiki import HibikiServed
    from .moshi.served import MoshiServed

    dev = resolve_device(device)
    dtype = getattr(torch, source.dtype)
    ckpt = load_checkpoint(Path(source.uri.removeprefix("file://")), device=dev, dtype=dtype)
    if source.family != "auto" and ckpt.family != source.family:
        raise ModelError(f"model.uri {source.uri!r} holds a {ckpt.family} checkpoint, not {source.family}")
    gen = ckpt.lm_gen_config
    temperature = source.temperature if source.temperature is not None else float(gen.get("temp", UPSTREAM_TEMP))
    top_k = source.top_k if source.top_k is not None else int(gen.get("top_k", UPSTREAM_TOP_K))
    if ckpt.family == "hibiki":
        cfg = source.cfg_coef if source.cfg_coef is not None else float(gen.get("cfg_coef", 1.0))
        served: MoshiServed = HibikiServed(ckpt, temperature=temperature, top_k=top_k, device=dev, cfg_coef=cfg)
    elif source.cfg_coef is not None:
        raise ModelError(
            f"model.cfg_coef applies to Hibiki (classifier-free guidance); model.uri {source.uri!r} holds a "
            f"{ckpt.family} checkpoint: unset it"
        )
    else:
        served = MoshiServed(ckpt, temperature=temperature, top_k=top_k, device=dev)
    if source.voice or source.persona:
        try:
            served.set_default_prompt(source.voice, source.persona)
        except ModelError as e:
            raise ModelError(f"model.voice / model.persona: {e}") from None
    return served
