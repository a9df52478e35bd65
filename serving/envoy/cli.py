"""``duplex envoy``: Envoy's bootstrap from the gateway's spec (listener port, TLS, mutual TLS), the session
picker's address and the engines' endpoint file, then the Envoy binary as this process's child. A SIGTERM
drains it (``drain.py``: new connections refused at once, live conversations given ``gateway.drain_grace_s``),
then stops it. The picker writes the endpoint file (Envoy refuses to start without it):
``duplex envoy`` waits for it, so the two may start in either order."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import typer

from .. import logs
from ..settings import fields_help
from ..spec import GatewaySpec
from .config import EnvoyConfig


def envoy_config(
    spec: GatewaySpec,
    picker: str,
    eds_path: Path,
    port: int | None = None,
    realtime: str = "",
    realtime_eds_path: Path | None = None,
) -> EnvoyConfig:
    """What ``duplex envoy`` runs: ``spec``'s host, port (or ``port``) and TLS files; the Realtime listener on
    ``spec.http_port`` when ``realtime`` (the HOST:PORT it proxies) is set. ValueError naming what is wrong."""
    from .eds import check_addresses
    from .tls import check_tls

    check_tls(spec)  # both files or neither, readable PEM, a client CA only with TLS
    check_addresses([picker], "--picker")
    if realtime:
        check_addresses([realtime], "--realtime")
        if not spec.http_port:
            raise ValueError("--realtime needs gateway.http_port, the port Envoy serves it on")
        if realtime_eds_path is None:
            raise ValueError("--realtime needs --realtime-eds-path, the engines' WebSocket endpoint file")
    if not eds_path.parent.is_dir():
        raise ValueError(f"--eds-path {str(eds_path)!r}: directory {str(eds_path.parent)!r} does not exist")
    return EnvoyConfig(
        picker=picker,
        eds_path=eds_path,
        host=spec.host,
        port=spec.port if port is None else port,
        realtime=realtime,
        realtime_port=spec.http_port if realtime else 0,
        realtime_eds_path=realtime_eds_path if realtime else None,
        tls_cert_file=spec.tls_cert_file,
        tls_key_file=spec.tls_key_file,
        client_ca_file=spec.client_ca_file,
    )


def wait_for_file(path: Path, deadline_s: float, poll_s: float = 0.1) -> None:
    """Return once ``path`` exists; OSError naming it after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not path.exists():
        if time.monotonic() >= end:
            raise OSError(
                f"--eds-path {str(path)!r}: no endpoint file after {deadline_s:g} s (duplex picker writes it)"
            )
        time.sleep(poll_s)


def envoy(
    config: Path | None = typer.Option(None, help='JSON {"gateway": GatewaySpec}'),
    set_: list[str] = typer.Option([], "--set", help="Override a field: gateway.port=8443"),
    picker: str = typer.Option("127.0.0.1:9095", help="IP:PORT of the session picker (duplex picker)"),
    eds_path: Path = typer.Option(Path(), help="Endpoint file of the engines cluster (the picker writes it)"),
    port: int | None = typer.Option(None, min=0, max=65535, help="Listener port (overrides gateway.port)"),
    concurrency: int | None = typer.Option(
        None, min=1, max=64, help="Envoy worker threads (overrides gateway.envoy_concurrency)"
    ),
    realtime: str = typer.Option(
        "",
        help="IP:PORT of the session picker's HTTP app: serve the Realtime endpoint on gateway.http_port "
        "(default: none)",
    ),
    realtime_eds_path: Path | None = typer.Option(
        None, help="Endpoint file of the engines' Realtime WebSocket ports (the picker writes it; with --realtime)"
    ),
    bootstrap_path: Path | None = typer.Option(None, help="Where to write the bootstrap (default: a temp dir)"),
    eds_wait_s: float = typer.Option(
        120.0, min=0.0, help="Longest wait for the picker's endpoint file before giving up (exit 2)"
    ),
    log_level: str = typer.Option("warning", help="Envoy's log level"),
    help_spec: bool = typer.Option(False, help="List every spec field and exit"),
) -> None:
    """Run Envoy, the front door: TLS and mutual TLS end here; each Converse stream is checked once by the
    session picker and carried to the engine it names (docs/envoy.md)."""
    from ..cli import load_command_config
    from .config import bootstrap
    from .drain import Supervisor
    from .process import die_with_parent, envoy_binary

    if help_spec:
        typer.echo(fields_help(GatewaySpec))
        raise typer.Exit()
    if eds_path == Path():
        typer.echo("duplex envoy: --eds-path is required (the engines' endpoint file)", err=True)
        raise typer.Exit(2)
    logs.setup()
    spec = load_command_config("envoy", config, set_)["gateway"]
    assert isinstance(spec, GatewaySpec)
    try:
        cfg = envoy_config(spec, picker, eds_path, port, realtime, realtime_eds_path)
        binary = envoy_binary()
        wait_for_file(cfg.eds_path, eds_wait_s)
        if cfg.realtime_eds_path is not None:
            wait_for_file(cfg.realtime_eds_path, eds_wait_s)
        path = bootstrap_path or Path(tempfile.mkdtemp(prefix="duplex-envoy-")) / "envoy.json"
        path.write_text(json.dumps(bootstrap(cfg)))
    except (ValueError, OSError) as e:
        typer.echo(f"duplex envoy: {e}", err=True)
        raise typer.Exit(2) from None
    tls = " (mutual TLS)" if cfg.client_ca_file else " (TLS)" if cfg.tls_cert_file else ""
    typer.echo(f"duplex envoy: listening on {cfg.host}:{cfg.port}{tls}; picker {picker}; endpoints {eds_path}")
    threads = spec.envoy_concurrency if concurrency is None else concurrency
    command = [binary, "-c", str(path), "--disable-hot-restart", "--concurrency", str(threads)]
    supervisor = Supervisor(
        [*command, "--log-level", log_level],
        path.with_name("admin-address.txt"),
        spec.drain_grace_s,
        lambda line: typer.echo(f"duplex envoy: {line}"),
    )
    raise typer.Exit(supervisor.run(die_with_parent))
