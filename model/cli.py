"""``duplex model …``: inspect presets and plan shard groups."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import ModelConfig, ModelError, get_preset
from .planner import GIB, count_params, plan

app = typer.Typer(help="Model presets, sizes and shard plans.", no_args_is_help=True)
console = Console()


def _preset(name: str) -> ModelConfig:
    try:
        return get_preset(name)
    except ModelError as e:
        raise typer.BadParameter(str(e), param_hint="--preset") from None


@app.command()
def info(
    preset: Annotated[str, typer.Option(help="Preset name, e.g. tiny or tml-interaction-small.")] = "tiny",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Layers, experts, top-k, total and active parameters of a preset (computed analytically)."""
    cfg = _preset(preset)
    pc = count_params(cfg)
    info = {
        "preset": cfg.name,
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "heads": cfg.n_heads,
        "kv_heads": cfg.n_kv_heads,
        "experts": cfg.n_experts,
        "top_k": cfg.top_k,
        "expert_hidden": cfg.expert_hidden,
        "shared_expert_hidden": cfg.shared_expert_hidden,
        "window_frames": cfg.window,
        "frame_ms": cfg.frame_ms,
        "total_params": pc.total,
        "active_params": pc.active,
        "dense_params": pc.dense,
        "dtype": cfg.dtype,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=f"duplex model {cfg.name}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in info.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)


@app.command("plan")
def plan_cmd(
    preset: Annotated[str, typer.Option(help="Preset name.")] = "tiny",
    gpu_memory_gib: Annotated[float, typer.Option(help="Memory of one GPU in GiB.")] = 80.0,
    sessions: Annotated[int, typer.Option(help="Concurrent sessions per replica (KV caches on rank 0).")] = 1,
    headroom: Annotated[float, typer.Option(help="Fraction of each GPU kept free for activations.")] = 0.1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Smallest expert-parallel shard count whose per-shard memory fits the GPU."""
    cfg = _preset(preset)
    try:
        p = plan(cfg, gpu_memory_gib, sessions, headroom)
    except ModelError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(p.model_dump_json(indent=2))
        return
    console.print(
        f"[bold]{cfg.name}[/]: {p.shards} shard(s) × {p.experts_per_shard} experts; rank 0 needs "
        f"{p.bytes_per_shard / GIB:.2f} GiB (weights {p.weight_bytes_per_shard[0] / GIB:.2f} + KV "
        f"{p.kv_bytes / GIB:.2f}) + {p.headroom_bytes / GIB:.2f} GiB headroom of {gpu_memory_gib} GiB"
    )
