"""``duplex engine | gateway | up | talk``. Flags come from the specs: ``--config FILE.json`` (the operator
renders ``{"engine": EngineSpec, "model": ModelSource}`` or ``{"gateway": GatewaySpec}``) plus
``--set FIELD=VALUE`` overrides of any spec field (``duplex engine --help-spec`` lists them)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

from duplex.model.spec import ModelSource

from . import logs
from .process import GatewayProcess, serve_until_signal
from .spec import EngineSpec, GatewaySpec

log = logging.getLogger("duplex.serving")


def _fields_help(*models: type[BaseModel]) -> str:
    lines = []
    for m in models:
        for name, f in m.model_fields.items():
            lines.append(f"{m.__name__}.{name} (default {f.default!r}): {f.description or ''}")
    return "\n".join(lines)


def _apply(data: dict[str, Any], sets: list[str], section: str) -> dict[str, Any]:
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set {item!r}: expected FIELD=VALUE")
        parts = key.split(".")
        target = data.setdefault(parts[0] if len(parts) > 1 else section, {})
        field = parts[-1]
        try:
            target[field] = json.loads(value)
        except json.JSONDecodeError:
            target[field] = value
    return data


def _load(config: Path | None, sets: list[str], section: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(config.read_text()) if config else {}
    return _apply(data, sets, section)


def _rank_from_hostname() -> int:
    m = re.search(r"-(\d+)$", socket.gethostname())
    if not m:
        raise typer.BadParameter(f"--rank-from-hostname: hostname {socket.gethostname()!r} has no -ORDINAL suffix")
    return int(m.group(1))


def _run_server(command: str, main: Coroutine[Any, Any, None]) -> None:
    """Run a server's main coroutine; a bad setting or an unusable port (ValueError/OSError) becomes
    ``duplex COMMAND: message`` and exit status 2 instead of a traceback."""
    try:
        asyncio.run(main)
    except (ValueError, OSError) as e:
        typer.echo(f"duplex {command}: {e}", err=True)
        raise typer.Exit(2) from None


def engine(
    config: Path | None = typer.Option(None, help='JSON {"engine": EngineSpec, "model": ModelSource}'),
    set_: list[str] = typer.Option([], "--set", help="Override a field: engine.max_sessions=32, model.seed=1"),
    rank: int = typer.Option(0, help="Rank in the replica's shard group"),
    world_size: int = typer.Option(1, help="Ranks in the shard group"),
    rank_from_hostname: bool = typer.Option(False, help="Take the rank from the StatefulSet ordinal"),
    leader: str = typer.Option("", help="HOST:PORT of rank 0's rendezvous (world_size > 1)"),
    port: int | None = typer.Option(None, help="gRPC port (overrides engine.port; 0 = any)"),
    help_spec: bool = typer.Option(False, help="List every spec field and exit"),
) -> None:
    """Run one rank of an engine replica (rank 0 serves gRPC; other ranks hold experts)."""
    if help_spec:
        typer.echo(_fields_help(EngineSpec, ModelSource))
        raise typer.Exit()
    logs.setup()
    data = _load(config, set_, "engine")
    spec = EngineSpec.model_validate(data.get("engine", {}))
    source = ModelSource.model_validate(data.get("model", {}))
    if rank_from_hostname:
        rank = _rank_from_hostname()
    from duplex.model.runtime import load_part

    part = load_part(source, rank=rank, world_size=world_size, device=spec.device)
    group = None
    if world_size > 1:
        from duplex.model import parallel

        if not leader:
            raise typer.BadParameter("--leader HOST:PORT is required when --world-size > 1")
        parallel.init_group(rank, world_size, leader)
        if rank > 0:
            from duplex.model.model import ExpertShard

            assert isinstance(part, ExpertShard)
            log.info("rank %d/%d serving experts", rank, world_size)
            parallel.serve_experts(part)
            return
        from duplex.model.model import DuplexModel

        assert isinstance(part, DuplexModel)
        group = parallel.ExpertGroup(part)

    from .engine.server import EngineServer

    async def main() -> None:
        server = EngineServer(spec, source, model=part, bind_port=port)  # type: ignore[arg-type]
        await server.start()
        await serve_until_signal(lambda: server.stop(5.0))

    try:
        asyncio.run(main())
    finally:
        if group is not None:
            group.stop()


def gateway(
    config: Path | None = typer.Option(None, help='JSON {"gateway": GatewaySpec}'),
    set_: list[str] = typer.Option([], "--set", help="Override a field: gateway.engines=[\"h:7070\"]"),
    engines: str = typer.Option("", help="Comma-separated engine HOST:PORT list (overrides gateway.engines)"),
    port: int | None = typer.Option(None, help="Public gRPC port (overrides gateway.port; 0 = any)"),
    help_spec: bool = typer.Option(False, help="List every spec field and exit"),
) -> None:
    """Run the gateway: auth, admission, least-loaded routing, relay; drains on SIGTERM."""
    if help_spec:
        typer.echo(_fields_help(GatewaySpec))
        raise typer.Exit()
    logs.setup()
    data = _load(config, set_, "gateway")
    spec = GatewaySpec.model_validate(data.get("gateway", {}))
    if engines:
        spec = spec.model_copy(update={"engines": [e.strip() for e in engines.split(",") if e.strip()]})
    from .gateway.server import GatewayServer

    async def main() -> None:
        server = GatewayServer(spec, bind_port=port)
        await server.start()
        await serve_until_signal(server.drain)

    _run_server("gateway", main())


def up(
    port: int = typer.Option(8080, help="Gateway port on 127.0.0.1 (0 = any)"),
    max_sessions: int = typer.Option(64, help="Slots of the embedded engine"),
    chunk_ms: int = typer.Option(200, help="Micro-turn length"),
    metrics_port: int = typer.Option(0, help="Engine Prometheus port (gateway uses +1; 0 = off)"),
    torch_threads: int = typer.Option(1, help="Step-thread torch threads (1 leaves a core for gRPC on 2-core hosts)"),
    cohorts: int = typer.Option(4, help="Phase cohorts of the engine"),
) -> None:
    """Everything on this machine, no cluster: engine (shipped checkpoint or random weights) + open gateway."""
    logs.setup(json_lines=False)
    from .engine.server import EngineServer

    async def main() -> None:
        espec = EngineSpec.model_validate(dict(host="127.0.0.1", max_sessions=max_sessions, chunk_ms=chunk_ms,
                                               metrics_port=metrics_port, torch_threads=torch_threads,
                                               cohorts=cohorts))
        engine_server = EngineServer(espec, ModelSource.model_validate({}), bind_port=0)
        eport = await engine_server.start()
        gspec = GatewaySpec.model_validate(dict(host="127.0.0.1", engines=[f"127.0.0.1:{eport}"], open_access=True,
                                                metrics_port=metrics_port + 1 if metrics_port else 0,
                                                drain_grace_s=2.0))
        gw = GatewayProcess(gspec, port)  # its own process: the relay does not share the step thread's GIL
        try:
            gport = await asyncio.to_thread(gw.start)
        except (ValueError, OSError):
            await engine_server.stop(1.0)
            raise
        print(f"duplex up: ready at 127.0.0.1:{gport} (engine 127.0.0.1:{eport}); Ctrl-C to stop", flush=True)

        async def stop() -> None:
            if gw.proc.exitcode is not None:
                print(f"duplex up: the gateway exited (code {gw.proc.exitcode}); stopping", flush=True)
            await asyncio.to_thread(gw.stop, gspec.drain_grace_s + 5.0)
            await engine_server.stop(1.0)
            print("duplex up: stopped", flush=True)

        await serve_until_signal(stop, also=asyncio.to_thread(gw.wait))

    _run_server("up", main())


def talk(
    target: str = typer.Option("127.0.0.1:8080", help="Gateway or engine HOST:PORT"),
    input: Path = typer.Option(..., exists=True, dir_okay=False,
                               help="Audio file to say (any rate/channels libsndfile reads; converted to 16 kHz "
                                    "mono with soxr HQ, and says so)"),
    output: Path = typer.Option(..., help="Where to write the model's audio (16 kHz mono WAV, sample 0 = "
                                          "capture start of the input's first chunk)"),
    model_time: bool = typer.Option(False, "--model-time",
                                    help="Place the model's audio by each chunk's output_sample (model time: in "
                                         "step with the input, no delivery delay) instead of as heard (the "
                                         "default: where each chunk arrived on the client clock). Arrival times "
                                         "then do not enter the file: runs with the same outputs give the same "
                                         "bytes"),
    timeline: Path | None = typer.Option(None, help="JSON timeline of every server event (client clock)"),
    plot: Path | None = typer.Option(None, help="PNG of user and model speech on one time axis"),
    fast: bool = typer.Option(False, help="Send as fast as the server takes it instead of real-time pace"),
    api_key: str = typer.Option(os.environ.get("DUPLEX_API_KEY", ""), help="API key (or $DUPLEX_API_KEY)"),
    chunk_ms: int = typer.Option(200, help="Chunk length (must match the server)"),
    ca_cert: Path | None = typer.Option(None, "--ca-cert", metavar="FILE", exists=True, dir_okay=False,
                                        help="PEM CA bundle: connect with TLS"),
) -> None:
    """Hold one conversation from an audio file and record the model's side.

    Chunk k of the input is sent when a microphone would hand it over (capture start + (k+1) x chunk_ms).
    The output WAV shares the input's time axis; by default the model's audio is placed as heard (where each
    chunk arrived, so latency can be read off the two tracks); --model-time places it by output_sample."""
    import grpc

    from duplex.model.audio_io import AudioFileError

    from . import client
    from . import talk as talk_mod

    sr = 16000
    try:
        user, note = talk_mod.load_input(input, sr)
    except AudioFileError as e:
        typer.echo(f"duplex talk: --input: {e}", err=True)
        raise typer.Exit(2) from None
    if note is not None:
        typer.echo(f"duplex talk: {note}", err=True)
    chunks = client.split_chunks(user, sr * chunk_ms // 1000)
    md = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    async def main() -> client.Conversation:
        async with client.channel(target, str(ca_cert) if ca_cert is not None else None) as ch:
            return await client.converse(ch, chunks, chunk_ms=chunk_ms, realtime=not fast, metadata=md,
                                         start=client.start_event(chunk_ms=chunk_ms))

    conv = asyncio.run(main())
    if conv.code != grpc.StatusCode.OK:
        typer.echo(f"duplex talk: {conv.code.name}: {conv.details}", err=True)
        raise typer.Exit(1)
    talk_mod.save(conv, user, sr, output, timeline, plot, model_time)
    turns = len(conv.of("turn"))
    placed = "model time" if model_time else "as heard"
    typer.echo(f"duplex talk: {len(conv.of('audio'))} chunks, {turns} turn events → {output} ({placed})")


def register(app: typer.Typer) -> None:
    app.command("engine")(engine)
    app.command("gateway")(gateway)
    app.command("up")(up)
    app.command("talk")(talk)
