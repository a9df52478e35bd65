"""``duplex picker``: the session picker as its own process, the partner of ``duplex envoy`` in a front pod.
It writes the engines' endpoint file Envoy watches (``--eds-path``) from the engine addresses it was given
(``--engines``) or, with ``gateway.engine_selector``, from the engines' leader EndpointSlices it watches through
the Kubernetes API (``watch.py``: the file and the placement follow every replica that comes, goes or stops
serving), then answers Envoy's ``ext_authz`` checks on ``--bind``:``--port`` (loopback by default: only the Envoy beside
it asks). With ``--http-port`` it also serves its HTTP app for the Realtime endpoint (client secrets, the
page's config, the page) there, and keeps ``--realtime-eds-path`` listing the engines' WebSocket addresses
(each engine's host and the Realtime port it reports). Settings are the gateway's (``GatewaySpec``: keys,
quotas, polling, metrics)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .. import logs
from ..envoy.config import ENGINES_CLUSTER, REALTIME_CLUSTER
from ..settings import fields_help
from ..spec import GatewaySpec

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from ..envoy.eds import EndpointFiles
    from .server import PickerServer
    from .watch import EngineWatch

PICKER_PORT = 9095
"""The picker's gRPC port in a front pod (Envoy asks it on 127.0.0.1)."""
PICKER_HTTP_PORT = 9097
"""Loopback port of the picker's HTTP app (client secrets, the page's config, the page) in a front pod."""


async def publish_websockets(server: PickerServer, files: EndpointFiles, interval_s: float) -> None:
    """Keep the Realtime endpoint file listing every engine that reported a WebSocket port (checked every
    ``interval_s``, written only when the list changes)."""
    from .realtime import ws_address

    published: list[str] = []
    while True:
        now = sorted(ws_address(r) for r in server.picker.router.replicas if r.http_port)
        if now != published:
            files.publish(REALTIME_CLUSTER, now)
            published = now
        await asyncio.sleep(interval_s)


def set_engines(server: PickerServer, files: EndpointFiles, addresses: list[str]) -> None:
    """Route to exactly ``addresses`` from now on: the picker drops a removed engine before Envoy's endpoint file
    loses it (no new session goes there; live ones keep their streams), and an added one takes sessions once its
    first load report arrives, after the file lists it."""
    server.picker.router.set_addresses(addresses)
    files.publish(ENGINES_CLUSTER, addresses)


def watch_engines(
    server: PickerServer, files: EndpointFiles, api: ApiClient, namespace: str, selector: str
) -> EngineWatch:
    """Start following the engines' leader EndpointSlices (``selector`` in ``namespace``): each change is
    applied on this event loop (:func:`set_engines`)."""
    from .watch import EngineWatch

    loop = asyncio.get_running_loop()

    def changed(addresses: list[str]) -> None:  # on the watch thread
        loop.call_soon_threadsafe(set_engines, server, files, addresses)

    watch = EngineWatch(api, namespace, selector, changed)
    watch.start()
    return watch


def picker(
    config: Path | None = typer.Option(None, help='JSON {"gateway": GatewaySpec}'),
    set_: list[str] = typer.Option([], "--set", help="Override a field: gateway.key_max_sessions=4"),
    engines: str = typer.Option("", help="Comma-separated engine IP:PORT list (overrides gateway.engines)"),
    eds_path: Path = typer.Option(
        Path(), help="Endpoint file of the engines cluster that Envoy watches (written here)"
    ),
    port: int = typer.Option(PICKER_PORT, min=0, max=65535, help="gRPC port of the ext_authz service (0 = any)"),
    bind: str = typer.Option("127.0.0.1", help="Address of the ext_authz service (Envoy's side of the pod)"),
    http_port: int | None = typer.Option(
        None, min=0, max=65535, help="Port of the HTTP app for the Realtime endpoint on --bind (default: none)"
    ),
    realtime_eds_path: Path | None = typer.Option(
        None, help="Endpoint file of the engines' Realtime WebSocket ports that Envoy watches (with --http-port)"
    ),
    engine_selector: str | None = typer.Option(
        None,
        help="Label selector of the engines' leader EndpointSlices to watch through the Kubernetes API "
        "(overrides gateway.engine_selector)",
    ),
    engine_namespace: str | None = typer.Option(
        None, help="Namespace of those EndpointSlices (overrides gateway.engine_namespace; default: the pod's)"
    ),
    kubeconfig: str | None = typer.Option(
        None, help="Kubeconfig for the engine watch (default: the pod's service account, else ~/.kube/config)"
    ),
    help_spec: bool = typer.Option(False, help="List every spec field and exit"),
) -> None:
    """Run the session picker: API keys, per-key quotas, placement on the engine with most free slots; writes
    the engines' endpoints for Envoy (docs/envoy.md)."""
    from ..cli import _run_server

    if help_spec:
        typer.echo(fields_help(GatewaySpec))
        raise typer.Exit()
    if eds_path == Path():
        typer.echo("duplex picker: --eds-path is required (the engines' endpoint file)", err=True)
        raise typer.Exit(2)
    if (http_port is None) != (realtime_eds_path is None):
        typer.echo("duplex picker: --http-port and --realtime-eds-path go together (the Realtime endpoint)", err=True)
        raise typer.Exit(2)
    logs.setup()
    spec, api, namespace = _picker_spec(config, set_, engines, engine_selector, engine_namespace, kubeconfig)
    paths = {ENGINES_CLUSTER: eds_path}
    if realtime_eds_path is not None:
        paths[REALTIME_CLUSTER] = realtime_eds_path
    _run_server("picker", _serve_picker(spec, port, bind, http_port, paths, api, namespace))


def _picker_spec(
    config: Path | None,
    set_: list[str],
    engines: str,
    engine_selector: str | None,
    engine_namespace: str | None,
    kubeconfig: str | None,
) -> tuple[GatewaySpec, ApiClient | None, str]:
    """The picker's spec with the command line's overrides, and, when it watches EndpointSlices, the
    Kubernetes API client and the namespace to watch (None and "" otherwise). Exits 2 naming what is wrong."""
    from ..cli import load_command_config

    spec = load_command_config("picker", config, set_)["gateway"]
    assert isinstance(spec, GatewaySpec)
    if engines:
        spec = spec.model_copy(update={"engines": [e.strip() for e in engines.split(",") if e.strip()]})
    overrides = {"engine_selector": engine_selector, "engine_namespace": engine_namespace}
    spec = spec.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if not spec.engine_selector:
        return spec, None, ""
    from .watch import load_api_client, pod_namespace

    if spec.engines:
        typer.echo("duplex picker: give --engines or --engine-selector, not both", err=True)
        raise typer.Exit(2)
    namespace = spec.engine_namespace or pod_namespace()
    if not namespace:
        typer.echo("duplex picker: --engine-selector needs --engine-namespace outside a pod", err=True)
        raise typer.Exit(2)
    try:
        api = load_api_client(kubeconfig)
    except Exception as e:  # the client's ConfigException, a missing or unreadable kubeconfig
        typer.echo(f"duplex picker: no Kubernetes API configuration for the engine watch: {e}", err=True)
        raise typer.Exit(2) from None
    return spec, api, namespace


async def _serve_picker(
    spec: GatewaySpec,
    port: int,
    bind: str,
    http_port: int | None,
    paths: dict[str, Path],
    api: ApiClient | None,
    namespace: str,
) -> None:
    """Serve the picker until a signal: publish the endpoint files (``paths`` by Envoy cluster), then follow
    the engines (EndpointSlices through ``api``, else the spec's fixed list) and their Realtime ports."""
    from ..envoy.eds import EndpointFiles
    from ..process import serve_until_signal
    from .server import PickerServer

    server = PickerServer(spec, bind_port=port, bind_host=bind, http_bind_port=http_port)
    files = EndpointFiles(paths)
    realtime = REALTIME_CLUSTER in paths
    if realtime:
        files.publish(REALTIME_CLUSTER, [])  # Envoy needs the file; the engines report their ports
    files.publish(ENGINES_CLUSTER, spec.engines)  # Envoy's only source of engine addresses
    bound = await server.start()
    watch = None
    if api is not None:
        watch = watch_engines(server, files, api, namespace, spec.engine_selector)
        source = f"EndpointSlices {spec.engine_selector} in {namespace}"
    else:
        source = f"{len(spec.engines)} engine(s)"
    typer.echo(f"duplex picker: serving on {bind}:{bound}; {source} in {paths[ENGINES_CLUSTER]}")
    ws = asyncio.create_task(publish_websockets(server, files, spec.health_interval_s)) if realtime else None
    try:
        await serve_until_signal(server.stop)
    finally:
        if ws is not None:
            ws.cancel()
        if watch is not None:
            watch.stop(0)
