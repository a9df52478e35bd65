"""safetensors checkpoints with the model config embedded; each rank reads only its own tensors.

Layout: the full model's state dict by name, routed experts stacked per layer (``blocks.{i}.moe.experts.w13``
of shape (E, d, 2h)). A rank of a shard group opens the file lazily and reads dense tensors only on rank 0
and, of each stacked expert tensor, only its own slice (``safe_open(...).get_slice``) — the rest of the
file is never read into memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig, ModelError
from .embed import AudioEmbed
from .model import DuplexModel, ExpertShard, expert_range
from .moe import MoeImpl

FORMAT = "duplex-checkpoint/1"


class CheckpointError(ModelError):
    """The checkpoint is missing, unreadable, or does not match the model it is loaded into."""


def save(
    model: DuplexModel, path: str | Path, metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None
) -> None:
    """Write a full (unsharded) model; ``metadata`` adds string fields (training command, metrics...).

    ``dtype`` stores the tensors in another precision (bfloat16 halves a shipped checkpoint); ``load``
    casts them back to the dtype it is asked for.
    """
    meta = {"format": FORMAT, "config": model.cfg.to_json(), **(metadata or {})}
    tensors = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"checkpoint {p} is not a readable safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return dict(meta)


def read_config(path: str | Path) -> ModelConfig:
    meta = read_metadata(path)
    try:
        return ModelConfig.from_json(meta["config"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has no valid embedded config: {e}") from e


def _check_expected(cfg: ModelConfig, expected: ModelConfig | None, path: str | Path) -> None:
    if expected is None:
        return
    a, b = cfg.model_dump(exclude={"name", "dtype"}), expected.model_dump(exclude={"name", "dtype"})
    diff = [f"{k}: checkpoint {a[k]!r} vs expected {b[k]!r}" for k in a if a[k] != b[k]]
    if diff:
        raise CheckpointError(f"checkpoint {path} does not match the {expected.name!r} config: " + "; ".join(diff))


def load(
    path: str | Path,
    rank: int = 0,
    world_size: int = 1,
    expected: ModelConfig | None = None,
    impl: MoeImpl = "grouped",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Rank ``rank``'s part: a ``DuplexModel`` on rank 0 (dense + its experts), an ``ExpertShard`` elsewhere."""
    cfg = read_config(path)
    _check_expected(cfg, expected, path)
    first, n_local = expert_range(cfg, rank, world_size)
    module: nn.Module
    with torch.device("meta"):
        module = DuplexModel(cfg, (first, n_local), impl) if rank == 0 else ExpertShard(cfg, (first, n_local), impl)
    wanted = module.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        present = set(f.keys())
        missing = [k for k in wanted if k not in present]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks tensors {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if rank == 0:
            extra = sorted(present - set(wanted) - {k for k in present if ".moe.experts." in k})
            if extra:
                raise CheckpointError(f"checkpoint {path} has tensors the model does not: {extra[:5]}")
        for name, ref in wanted.items():
            if ".moe.experts." in name:
                sl = f.get_slice(name)
                full = sl.get_shape()
                if full[0] != cfg.n_experts:
                    raise CheckpointError(f"tensor {name} has {full[0]} experts, config says {cfg.n_experts}")
                t = sl[first : first + n_local]
            else:
                t = f.get_tensor(name)
            if tuple(t.shape) != tuple(ref.shape):
                raise CheckpointError(f"tensor {name} has shape {tuple(t.shape)}, the model expects {tuple(ref.shape)}")
            tensors[name] = t
    target = dtype or getattr(torch, cfg.dtype)
    module = module.to_empty(device="cpu")
    module.load_state_dict({k: v.to(target) for k, v in tensors.items()}, strict=True, assign=True)
    _rebuild_buffers(module)
    return module.to(device=device)


def _rebuild_buffers(module: nn.Module) -> None:
    """Non-persistent buffers (mel filters, window) are not in the file; recompute them after a meta build."""
    for m in module.modules():
        if isinstance(m, AudioEmbed):
            m.reset_buffers()
