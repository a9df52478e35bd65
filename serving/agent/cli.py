"""``duplex agent``: a worker pool. Flags as the operator renders them: ``--redis-url URL`` (or
``--redis-url-file PATH``, a mounted Secret holding it) ``--config FILE`` (``{"agent": AgentSpec}``) plus
``--set agent.FIELD=VALUE`` overrides and ``--metrics-port``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer

from duplex.serving import logs
from duplex.serving.cli import _run_server, load_command_config
from duplex.serving.metrics import MetricsServer
from duplex.serving.process import serve_until_signal
from duplex.serving.settings import fields_help
from duplex.serving.spec import AgentSpec

from .protocol import StreamNames
from .redis_url import URL_FILE_ENV, url_from_flags
from .tools import registry_for
from .worker import AgentWorker


def agent(
    redis_url: str = typer.Option("", help="Redis URL (default: --redis-url-file, agent.redis.url, $DUPLEX_REDIS_URL)"),
    redis_url_file: str = typer.Option(
        "",
        envvar=URL_FILE_ENV,
        help="File holding the Redis URL (a mounted Secret; the operator sets $DUPLEX_REDIS_URL_FILE)",
    ),
    config: Path | None = typer.Option(None, help='JSON {"agent": AgentSpec}'),
    set_: list[str] = typer.Option([], "--set", help="Override a field: agent.concurrency=4"),
    metrics_port: int | None = typer.Option(None, help="Prometheus port (overrides agent.metrics_port; 0 = off)"),
    help_spec: bool = typer.Option(False, help="List every spec field and exit"),
) -> None:
    """Run a background-agent worker pool: consume jobs from Redis Streams, run tools, publish results."""
    if help_spec:
        typer.echo(fields_help(AgentSpec))
        raise typer.Exit()
    logs.setup()
    spec = load_command_config("agent", config, set_)["agent"]
    assert isinstance(spec, AgentSpec)
    if metrics_port is not None:
        spec = spec.model_copy(update={"metrics_port": metrics_port})
    try:
        url = url_from_flags(redis_url, redis_url_file)
    except ValueError as e:
        typer.echo(f"duplex agent: {e}", err=True)
        raise typer.Exit(2) from None
    url = url or spec.redis.url or os.environ.get("DUPLEX_REDIS_URL", "")
    if not url:
        typer.echo(
            "duplex agent: --redis-url: no Redis URL (--redis-url, --redis-url-file, agent.redis.url or "
            "$DUPLEX_REDIS_URL)",
            err=True,
        )
        raise typer.Exit(2)
    _run_server("agent", _serve(spec, url))


async def _serve(spec: AgentSpec, url: str) -> None:
    worker = AgentWorker(spec, url, registry_for(spec))
    metrics = MetricsServer(worker.metrics.registry, spec.host, spec.metrics_port)
    run = asyncio.create_task(worker.run(), name="agent-worker")

    async def announce() -> None:
        await worker.ready.wait()
        print(
            f"duplex agent: ready, consuming {StreamNames(spec.stream_prefix).jobs} as {worker.consumer} "
            f"(tools: {', '.join(worker.registry.names())}; metrics port {metrics.port})",
            flush=True,
        )

    announcer = asyncio.create_task(announce())

    async def stop() -> None:
        announcer.cancel()
        worker.stop()
        await run
        await worker.drain(spec.drain_grace_s)
        metrics.close()
        print("duplex agent: stopped", flush=True)

    await serve_until_signal(stop, also=asyncio.shield(run))  # a signal cancels the waiter, not the worker


def register(app: typer.Typer) -> None:
    app.command("agent")(agent)
