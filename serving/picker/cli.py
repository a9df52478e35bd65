"""``duplex picker``: the session picker as its own process, the partner of ``duplex envoy`` in a front pod.
It writes the engines' endpoint file Envoy watches (``--eds-path``) from the engine addresses it was given,
then answers Envoy's ``ext_authz`` checks on ``--bind``:``--port`` (loopback by default: only the Envoy beside
it asks). Settings are the gateway's (``GatewaySpec``: keys, quotas, polling, metrics)."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import logs
from ..envoy.config import ENGINES_CLUSTER
from ..settings import fields_help
from ..spec import GatewaySpec

PICKER_PORT = 9095
"""The picker's gRPC port in a front pod (Envoy asks it on 127.0.0.1)."""


def picker(
    config: Path | None = typer.Option(None, help='JSON {"gateway": GatewaySpec}'),
    set_: list[str] = typer.Option([], "--set", help="Override a field: gateway.key_max_sessions=4"),
    engines: str = typer.Option("", help="Comma-separated engine IP:PORT list (overrides gateway.engines)"),
    eds_path: Path = typer.Option(
        Path(), help="Endpoint file of the engines cluster that Envoy watches (written here)"
    ),
    port: int = typer.Option(PICKER_PORT, min=0, max=65535, help="gRPC port of the ext_authz service (0 = any)"),
    bind: str = typer.Option("127.0.0.1", help="Address of the ext_authz service (Envoy's side of the pod)"),
    help_spec: bool = typer.Option(False, help="List every spec field and exit"),
) -> None:
    """Run the session picker: API keys, per-key quotas, placement on the engine with most free slots; writes
    the engines' endpoints for Envoy (docs/envoy.md)."""
    from ..cli import _run_server, load_command_config
    from ..envoy.eds import EndpointFiles
    from ..process import serve_until_signal
    from .server import PickerServer

    if help_spec:
        typer.echo(fields_help(GatewaySpec))
        raise typer.Exit()
    if eds_path == Path():
        typer.echo("duplex picker: --eds-path is required (the engines' endpoint file)", err=True)
        raise typer.Exit(2)
    logs.setup()
    spec = load_command_config("picker", config, set_)["gateway"]
    assert isinstance(spec, GatewaySpec)
    if engines:
        spec = spec.model_copy(update={"engines": [e.strip() for e in engines.split(",") if e.strip()]})

    async def main() -> None:
        server = PickerServer(spec, bind_port=port, bind_host=bind)
        files = EndpointFiles({ENGINES_CLUSTER: eds_path})
        files.publish(ENGINES_CLUSTER, spec.engines)  # Envoy's only source of engine addresses
        bound = await server.start()
        typer.echo(f"duplex picker: serving on {bind}:{bound}; {len(spec.engines)} engine(s) in {eds_path}")
        await serve_until_signal(server.stop)

    _run_server("picker", main())
