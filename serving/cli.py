"""``duplex engine | up | talk`` (``duplex picker`` and ``duplex envoy``: ``picker/cli.py``, ``envoy/cli.py``).
Flags come from the specs: ``--config FILE.json`` (the operator renders ``{"engine": EngineSpec, "model":
ModelSource}`` or ``{"gateway": GatewaySpec}``, the front door's settings) plus
``--set SECTION.FIELD=VALUE`` overrides of any spec field (``duplex engine --help-spec`` lists them), both
read by :func:`duplex.serving.settings.load_section`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import BaseModel

from duplex.model.spec import ModelSource

from . import logs
from .process import AgentProcess, serve_until_signal
from .ranks import rank_from_hostname
from .settings import ConfigError, fields_help, load_section
from .spec import AgentSpec, EngineSpec, GatewaySpec

if TYPE_CHECKING:
    import numpy as np

    from duplex.v1 import duplex_pb2 as pb

    from . import client
    from .agent.redis_server import RedisServer
    from .up import LocalStack

log = logging.getLogger("duplex.serving")


CONFIG_SECTIONS: dict[str, dict[str, type[BaseModel]]] = {
    "engine": {"engine": EngineSpec, "model": ModelSource},
    "agent": {"agent": AgentSpec},
    "picker": {"gateway": GatewaySpec},
    "envoy": {"gateway": GatewaySpec},
}
"""Sections each command reads from ``--config`` and ``--set`` (the operator's ConfigMap holds only these)."""


def load_command_config(command: str, config: Path | None, sets: list[str]) -> dict[str, BaseModel]:
    """Every section ``command`` reads; a bad file or ``--set`` exits 2 with ``duplex COMMAND: ...field...``."""
    sections = CONFIG_SECTIONS[command]
    try:
        return {
            name: load_section(config, sets, name, model, known_sections=sections) for name, model in sections.items()
        }
    except ConfigError as e:
        typer.echo(f"duplex {command}: {e}", err=True)
        raise typer.Exit(2) from None


def _hostname_rank() -> int:
    try:
        return rank_from_hostname(socket.gethostname())
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--rank-from-hostname") from None


def _serve_experts(part: object, rank: int, world_size: int, spec: EngineSpec) -> None:
    """Rank > 0: answer rank 0's MoE requests, exporting expert timings and process metrics on /metrics."""
    from duplex.model import parallel
    from duplex.model.model import ExpertShard

    from .heap import freeze_startup_heap
    from .metrics import MetricsServer, RankMetrics

    assert isinstance(part, ExpertShard)
    metrics = RankMetrics(rank, world_size)
    metrics.time_experts(part)
    try:
        server = MetricsServer(metrics.registry, spec.host, spec.metrics_port)
    except OSError as e:
        typer.echo(f"duplex engine: rank {rank}: metrics on {spec.host}:{spec.metrics_port}: {e}", err=True)
        raise typer.Exit(2) from None
    log.info(
        "rank %d/%d serving experts (metrics on port %d; %d objects frozen)",
        rank,
        world_size,
        server.port,
        freeze_startup_heap(),
    )
    try:
        parallel.serve_experts(part)
    finally:
        server.close()


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
    from_hostname: bool = typer.Option(
        False, "--rank-from-hostname", help="Take the rank from the StatefulSet ordinal"
    ),
    leader: str = typer.Option("", help="HOST:PORT of rank 0's rendezvous (world_size > 1)"),
    port: int | None = typer.Option(None, help="gRPC port (overrides engine.port; 0 = any)"),
    help_spec: bool = typer.Option(False, help="List every spec field and exit"),
    redis_url: str = typer.Option(
        "",
        envvar="DUPLEX_REDIS_URL",
        help="Background agent's Redis (overrides engine.redis_url; the operator sets $DUPLEX_REDIS_URL)",
    ),
    redis_url_file: str = typer.Option(
        "",
        envvar="DUPLEX_REDIS_URL_FILE",
        help="File holding the background agent's Redis URL, instead of --redis-url (a mounted Secret; the "
        "operator sets $DUPLEX_REDIS_URL_FILE)",
    ),
) -> None:
    """Run one rank of an engine replica (rank 0 serves gRPC; other ranks hold experts)."""
    if help_spec:
        typer.echo(fields_help(EngineSpec, ModelSource))
        raise typer.Exit()
    logs.setup()
    loaded = load_command_config("engine", config, set_)
    spec, source = loaded["engine"], loaded["model"]
    assert isinstance(spec, EngineSpec) and isinstance(source, ModelSource)
    from .agent.redis_url import url_from_flags

    try:
        redis_url = url_from_flags(redis_url, redis_url_file)
    except ValueError as e:
        typer.echo(f"duplex engine: {e}", err=True)
        raise typer.Exit(2) from None
    if redis_url:
        spec = spec.model_copy(update={"redis_url": redis_url})
    if from_hostname:
        rank = _hostname_rank()
    from duplex.model.runtime import is_moshi_layout, load_part, load_served

    part: Any
    if is_moshi_layout(source):
        if world_size > 1:
            raise typer.BadParameter("--world-size > 1: a Moshi-family model runs on one rank")
        part = load_served(source, device=spec.device)
    else:
        part = load_part(source, rank=rank, world_size=world_size, device=spec.device)
    group = None
    if world_size > 1:
        from duplex.model import parallel

        if not leader:
            raise typer.BadParameter("--leader HOST:PORT is required when --world-size > 1")
        parallel.init_group(rank, world_size, leader)
        if rank > 0:
            _serve_experts(part, rank, world_size, spec)
            return
        from duplex.model.model import DuplexModel

        assert isinstance(part, DuplexModel)
        group = parallel.ExpertGroup(part)

    from .engine.server import EngineServer

    async def main() -> None:
        server = EngineServer(spec, source, model=part, bind_port=port)  # type: ignore[arg-type]
        await server.start()
        await serve_until_signal(lambda: server.stop(spec.drain_grace_s))

    try:
        asyncio.run(main())
    finally:
        if group is not None:
            group.stop()


def up(
    port: int = typer.Option(8080, help="Envoy's listener port on 127.0.0.1, the front door (0 = any)"),
    checkpoint: Path | None = typer.Option(
        None,
        help="Checkpoint to serve: a duplex .safetensors file, or a Moshi-family directory (Moshi, PersonaPlex, "
        "Hibiki: a local snapshot of its repository; `duplex model init` writes a small random one). "
        "Default: the shipped reference checkpoint",
    ),
    family: str = typer.Option("auto", help="Model family (auto, duplex, moshi, personaplex, hibiki)"),
    temperature: float | None = typer.Option(
        None, help="Moshi family: sampling temperature of text and audio, 0 = greedy (default: the checkpoint's)"
    ),
    top_k: int | None = typer.Option(None, help="Moshi family: top-k of audio sampling (default: the checkpoint's)"),
    cfg_coef: float | None = typer.Option(
        None,
        help="Hibiki: classifier-free guidance coefficient, 1 = none, 3 typical; above 1 each session runs as two "
        "LM rows (default: the checkpoint's, else 1)",
    ),
    voice: str = typer.Option("", help="PersonaPlex: default voice, a name of the checkpoint's voices/ (NATF2)"),
    persona: str = typer.Option(
        "", help="PersonaPlex: default <system> persona text (a session's instructions replace it)"
    ),
    replicas: int = typer.Option(1, min=1, max=16, help="Engine replicas (a process each) behind Envoy"),
    max_sessions: int = typer.Option(64, help="Slots of each engine replica"),
    chunk_ms: int | None = typer.Option(
        None, help="Micro-turn length (default: 200 ms for duplex, one 80 ms frame for the Moshi family)"
    ),
    metrics_port: int = typer.Option(
        0,
        help="Prometheus port P of engine 0; the session picker uses P+1, engine I>=1 P+1+I (0 = off)",
    ),
    torch_threads: int = typer.Option(1, help="Step-thread torch threads (1 leaves a core for gRPC on 2-core hosts)"),
    cohorts: int = typer.Option(4, help="Phase cohorts of each engine"),
    no_agent: bool = typer.Option(False, "--no-agent", help="Start no redis-server and no agent worker"),
    batch_invariant: bool = typer.Option(
        True, help="Bit-identical outputs whatever shares a step (engine.batch_invariant; docs/benchmarks.md)"
    ),
    http_port: int | None = typer.Option(
        None,
        help="Serve the OpenAI-Realtime-compatible WebSocket endpoint /v1/realtime and the browser page on this "
        "port of 127.0.0.1 (0 = any free port; default: not served)",
    ),
    envoy_concurrency: int = typer.Option(1, min=1, help="Envoy worker threads"),
) -> None:
    """Everything on this machine, no cluster: engine replicas (shipped checkpoint or random weights) behind
    Envoy and the session picker (docs/envoy.md), and the background agent (a local redis-server on a free
    loopback port and one worker)."""
    logs.setup(json_lines=False)
    source = _up_source(checkpoint, family, temperature, top_k, cfg_coef, voice, persona)
    engine_fields = _up_engine_fields(
        source,
        max_sessions=max_sessions,
        chunk_ms=chunk_ms,
        metrics_port=metrics_port,
        torch_threads=torch_threads,
        cohorts=cohorts,
        batch_invariant=batch_invariant,
    )
    from .up import LocalStack

    stack = LocalStack(
        source,
        engine_fields,
        replicas=replicas,
        port=port,
        http_port=http_port,
        metrics_port=metrics_port,
        envoy_concurrency=envoy_concurrency,
    )
    local = _LocalAgent(_up_redis(no_agent))
    _run_server("up", _up_main(stack, local))


def _up_source(
    checkpoint: Path | None,
    family: str,
    temperature: float | None,
    top_k: int | None,
    cfg_coef: float | None = None,
    voice: str = "",
    persona: str = "",
) -> ModelSource:
    """``duplex up``'s model from its flags; a bad value or a missing checkpoint exits 2."""
    try:
        source = ModelSource.model_validate(
            dict(
                family=family,
                uri=str(checkpoint) if checkpoint is not None else None,
                temperature=temperature,
                top_k=top_k,
                cfg_coef=cfg_coef,
                voice=voice,
                persona=persona,
            )
        )
    except ValueError as e:
        typer.echo(f"duplex up: {e}", err=True)
        raise typer.Exit(2) from None
    if checkpoint is not None and not checkpoint.exists():
        typer.echo(f"duplex up: --checkpoint {checkpoint}: no such file or directory", err=True)
        raise typer.Exit(2)
    return source


def _up_redis(no_agent: bool) -> RedisServer | None:
    """The background agent's redis-server (not started yet), or None with ``--no-agent``; exits 2 when there
    is no redis-server to run."""
    from .agent.redis_server import RedisServer, RedisServerError

    if no_agent:
        return None
    try:
        return RedisServer()
    except RedisServerError:
        typer.echo(
            "duplex up: redis-server not found on PATH (apt-get install redis-server), or pass --no-agent", err=True
        )
        raise typer.Exit(2) from None


class _LocalAgent:
    """``duplex up``'s background agent: a local redis-server and one worker process (nothing without redis)."""

    def __init__(self, redis: RedisServer | None) -> None:
        self.redis = redis
        self.agent: AgentProcess | None = None

    @property
    def redis_url(self) -> str:
        return self.redis.url if self.redis is not None else ""

    async def start(self) -> None:
        """Start redis-server, then the worker (its own process, as the picker); a failure is an OSError or
        ValueError and leaves nothing running."""
        from .agent.redis_server import RedisServerError

        if self.redis is None:
            return
        try:
            await asyncio.to_thread(self.redis.start)
        except RedisServerError as e:
            raise OSError(f"redis-server: {e}") from None
        self.agent = AgentProcess(AgentSpec(metrics_port=0), self.redis.url)
        try:
            await asyncio.to_thread(self.agent.start)
        except (ValueError, OSError):
            self.redis.stop()
            raise

    async def stop(self) -> None:
        if self.agent is not None:
            await asyncio.to_thread(self.agent.stop, AgentSpec().drain_grace_s + 5.0)
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)

    def describe(self, tools: list[str]) -> str | None:
        """The line ``duplex up`` prints about a running agent (None when there is none)."""
        if self.redis is None or self.agent is None or self.redis.proc is None:
            return None
        return (
            f"duplex up: background agent: redis-server pid {self.redis.proc.pid} at {self.redis.url}, "
            f"worker pid {self.agent.pid} (tools: {', '.join(tools)})"
        )


def _up_engine_fields(
    source: ModelSource,
    *,
    max_sessions: int,
    chunk_ms: int | None,
    metrics_port: int,
    torch_threads: int,
    cohorts: int,
    batch_invariant: bool,
) -> dict[str, Any]:
    """The embedded engine's EngineSpec fields from ``duplex up``'s flags (all but ``redis_url``, known once
    the agent is up); the default chunk is 200 ms for duplex, one frame for the Moshi family."""
    from duplex.model.moshi import FRAME_MS as MOSHI_FRAME_MS
    from duplex.model.runtime import is_moshi_layout

    moshi = is_moshi_layout(source)
    return dict(
        host="127.0.0.1",
        max_sessions=max_sessions,
        chunk_ms=chunk_ms if chunk_ms is not None else MOSHI_FRAME_MS if moshi else 200,
        metrics_port=metrics_port,
        torch_threads=torch_threads,
        cohorts=cohorts,
        batch_invariant=batch_invariant,
    )


async def _up_main(stack: LocalStack, local: _LocalAgent) -> None:
    """Start the agent, then the engines, the picker and Envoy (a failure stops what was started), announce
    them, and serve until a signal or Envoy's exit."""
    from .up import serve

    EngineSpec.model_validate(stack.engine_fields)  # a bad flag is refused before redis and the worker start
    await local.start()
    stack.engine_fields = {**stack.engine_fields, "redis_url": local.redis_url}
    try:
        await stack.start()
    except (ValueError, OSError):
        await local.stop()
        raise
    for line in stack.lines():
        print(line, flush=True)
    if stack.picker is not None and stack.envoy is not None and stack.envoy.realtime_port:
        print(f"duplex up: realtime at {realtime_urls(stack.picker.spec, stack.envoy.realtime_port)}", flush=True)
    agent_line = local.describe(EngineSpec.model_validate(stack.engine_fields).tools)
    if agent_line is not None:
        print(agent_line, flush=True)
    await serve(stack, local.stop)


def realtime_urls(spec: GatewaySpec, http_port: int) -> str:
    """The Realtime endpoint's and the page's addresses, as printed by ``duplex up``."""
    host = "127.0.0.1" if spec.host in ("0.0.0.0", "") else spec.host
    tls = bool(spec.tls_cert_file and spec.tls_key_file)
    ws, http = ("wss", "https") if tls else ("ws", "http")
    return f"{ws}://{host}:{http_port}/v1/realtime (page: {http}://{host}:{http_port}/)"


def talk(
    target: str = typer.Option("127.0.0.1:8080", help="Front door (what `duplex up` prints) or engine HOST:PORT"),
    input: Path = typer.Option(
        ...,
        exists=True,
        dir_okay=False,
        help="Audio file to say (any rate/channels libsndfile reads; converted to the model's rate, mono, "
        "with soxr HQ, and says so: 16 kHz for duplex, 24 kHz for the Moshi family)",
    ),
    output: Path = typer.Option(
        ...,
        help="Where to write the model's audio (mono WAV at the model's rate, sample 0 = capture start of the "
        "input's first chunk)",
    ),
    model_time: bool = typer.Option(
        False,
        "--model-time",
        help="Place the model's audio by each chunk's output_sample (model time: in "
        "step with the input, no delivery delay) instead of as heard (the "
        "default: where each chunk arrived on the client clock). Arrival times "
        "then do not enter the file: runs with the same outputs give the same "
        "bytes",
    ),
    timeline: Path | None = typer.Option(None, help="JSON timeline of every server event (client clock)"),
    plot: Path | None = typer.Option(None, help="PNG of user and model speech on one time axis"),
    fast: bool = typer.Option(False, help="Send as fast as the server takes it instead of real-time pace"),
    api_key: str = typer.Option(os.environ.get("DUPLEX_API_KEY", ""), help="API key (or $DUPLEX_API_KEY)"),
    chunk_ms: int = typer.Option(0, help="Chunk length (0 = the server's; otherwise it must match the server's)"),
    ca_cert: Path | None = typer.Option(
        None, "--ca-cert", metavar="FILE", exists=True, dir_okay=False, help="PEM CA bundle: connect with TLS"
    ),
    call: list[str] = typer.Option(
        [],
        "--call",
        metavar="'TOOL {JSON}'",
        help="Ask the background agent to run TOOL (repeatable; call ids c1, c2, ...), after the first chunk. "
        "The conversation stays open (silence, up to --call-wait-s) until every call has its result",
    ),
    tools: str = typer.Option(
        "", help="Comma-separated tools to ask for in SessionStart.tools (default: the tools of the --call options)"
    ),
    call_wait_s: float = typer.Option(30.0, help="How long past the input to wait for --call results"),
    video: Path | None = typer.Option(
        None,
        exists=True,
        help="A video clip to show the model in step with the audio: an MP4 (any file FFmpeg reads), a folder "
        "of PNG frames or a video.npy of `duplex corpus make --task action-count` (both at --video-fps). Each "
        "audio chunk goes with the frame shown at its start, scaled to the server's video size",
    ),
    video_fps: float = typer.Option(5.0, help="Frames per second of a --video folder of PNG frames or .npy"),
) -> None:
    """Hold one conversation from an audio file and record the model's side.

    Chunk k of the input is sent when a microphone would hand it over (capture start + (k+1) x chunk_ms).
    The output WAV shares the input's time axis; by default the model's audio is placed as heard (where each
    chunk arrived, so latency can be read off the two tracks); --model-time places it by output_sample."""
    _talk_check_input(input)
    said: list[np.ndarray] = []
    calls = _talk_calls(call, tools)
    extra = _talk_extra(calls, video, video_fps, said)
    conv = asyncio.run(
        _talk_converse(
            target,
            ca_cert,
            api_key,
            _talk_preparer(input, said),
            calls,
            extra,
            fast=fast,
            chunk_ms=chunk_ms,
            call_wait_s=call_wait_s,
        )
    )
    _talk_check_status(conv)
    _talk_report(conv, said[0], output, timeline, plot, model_time)


def _talk_check_input(input: Path) -> None:
    """Read the input once for a clear error now (exit 2); it is converted to the model's rate once the server
    has said it."""
    from duplex.model.audio_io import AudioFileError, read_wav

    try:
        read_wav(input)
    except AudioFileError as e:
        typer.echo(f"duplex talk: --input: {e}", err=True)
        raise typer.Exit(2) from None


def _talk_extra(
    calls: _TalkCalls, video: Path | None, fps: float, said: list[np.ndarray]
) -> Callable[[pb.SessionReady], list[tuple[int, pb.ClientEvent]]]:
    """``converse``'s ``extra``: the ``--call`` requests after the first chunk and, with ``--video``, one frame
    before each chunk the clip covers (a clip that cannot be read exits 2 before connecting)."""
    from . import video as video_mod

    clip = None
    if video is not None:
        try:
            clip = video_mod.read_clip(video, fps)
        except video_mod.ClipError as e:
            typer.echo(f"duplex talk: --video: {e}", err=True)
            raise typer.Exit(2) from None

    def extra(ready: pb.SessionReady) -> list[tuple[int, pb.ClientEvent]]:
        events = [(1, r) for r in calls.requests]
        if clip is not None:
            chunks = -(-len(said[0]) // ready.chunk_samples)
            events += video_mod.frame_events(clip, chunks, ready.chunk_ms, ready.video_size)
        return events

    return extra


def _talk_preparer(input: Path, said: list[np.ndarray]) -> Callable[[pb.SessionReady], list[bytes]]:
    """``converse``'s ``prepare``: the input at the model's rate (appended to ``said``), in the negotiated
    chunks."""
    from . import client
    from . import talk as talk_mod

    def prepare(ready: pb.SessionReady) -> list[bytes]:
        rate = ready.input_format.sample_rate
        user, note = talk_mod.load_input(input, rate)
        if note is not None:
            typer.echo(f"duplex talk: {note}", err=True)
        said.append(user)
        return client.split_chunks(user, ready.chunk_samples)

    return prepare


@dataclass
class _TalkCalls:
    """``duplex talk``'s ``--call`` requests, the tools to ask for, and the call ids whose results it waits for."""

    requests: list[pb.ClientEvent]
    granted: list[str]
    ids: list[str]


def _talk_calls(call: list[str], tools: str) -> _TalkCalls:
    """Parse the ``--call`` options (a bad one exits 2); ``--tools`` defaults to the tools they name."""
    from . import talk as talk_mod

    try:
        requests = [talk_mod.parse_call(c, f"c{i}") for i, c in enumerate(call, start=1)]
    except ValueError as e:
        typer.echo(f"duplex talk: {e}", err=True)
        raise typer.Exit(2) from None
    granted = [t.strip() for t in tools.split(",") if t.strip()] or sorted({r.agent.tool for r in requests})
    return _TalkCalls(requests, granted, [r.agent.call_id for r in requests])


async def _talk_converse(
    target: str,
    ca_cert: Path | None,
    api_key: str,
    prepare: Callable[[pb.SessionReady], list[bytes]],
    calls: _TalkCalls,
    extra: Callable[[pb.SessionReady], list[tuple[int, pb.ClientEvent]]],
    *,
    fast: bool,
    chunk_ms: int,
    call_wait_s: float,
) -> client.Conversation:
    """The conversation: real-time pace unless ``fast``; the calls go after the first chunk and it stays open
    (up to ``call_wait_s``) until each has its result."""
    from . import client

    md = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    async with client.channel(target, str(ca_cert) if ca_cert is not None else None) as ch:
        return await client.converse(
            ch,
            prepare,
            realtime=not fast,
            metadata=md,
            start=client.start_event(chunk_ms=chunk_ms, sample_rate=0, tools=calls.granted),
            extra=extra,
            hold_open=lambda conv: not conv.agent_finished(calls.ids),
            max_hold_s=call_wait_s if calls.ids else 0.0,
        )


def _talk_check_status(conv: client.Conversation) -> None:
    """Exit 1 on a failed conversation; say which stream drops it saw (and whether they were resumed)."""
    import grpc

    if conv.code != grpc.StatusCode.OK:
        typer.echo(f"duplex talk: {conv.code.name}: {conv.details}", err=True)
        raise typer.Exit(1)
    for drop in conv.resumptions:
        ms = (drop.resumed_us - drop.dropped_us) / 1e3
        how = f"resumed after {ms:.0f} ms" if drop.resumed_us else "not resumed"
        typer.echo(f"duplex talk: the stream dropped ({drop.code.name}); {how}", err=True)


def _talk_report(
    conv: client.Conversation,
    user: np.ndarray,
    output: Path,
    timeline: Path | None,
    plot: Path | None,
    model_time: bool,
) -> None:
    """Write the output WAV (and the timeline and plot if asked), and print a summary and the agent results."""
    from duplex.v1 import duplex_pb2 as pb

    from . import talk as talk_mod

    ready = conv.of("ready")[0].event.ready
    talk_mod.save(conv, user, ready.output_format.sample_rate, output, timeline, plot, model_time)
    turns = len(conv.of("turn"))
    placed = "model time" if model_time else "as heard"
    typer.echo(f"duplex talk: {len(conv.of('audio'))} chunks, {turns} turn events → {output} ({placed})")
    for r in conv.of("agent"):
        a = r.event.agent
        if a.state in (pb.DONE, pb.FAILED):
            typer.echo(f"duplex talk: {a.job_id} {a.tool} {pb.AgentState.Name(a.state)}: {a.detail}")


def register(app: typer.Typer) -> None:
    app.command("engine")(engine)
    app.command("up")(up)
    from .envoy.cli import envoy
    from .picker.cli import picker

    app.command("picker")(picker)
    app.command("envoy")(envoy)
    app.command("talk")(talk)
    from .kserve.cli import kserve  # its SDK is imported only when the command runs

    app.command("kserve")(kserve)
