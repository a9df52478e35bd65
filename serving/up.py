"""``duplex up``'s data plane on this machine: N engine replicas (a process each), the session picker (a
process) and Envoy, the only front door: every ``Duplex.Converse`` stream goes through Envoy, which asks the
picker once per session (key, quotas, replica) and then carries the stream to that engine by itself. With
``--http-port`` Envoy's second listener (``--http-port``) does the same for the Realtime WebSocket: each engine
serves ``/v1/realtime`` on a private port of its own, the picker answers the upgrade (key or client secret,
quotas, engine) and serves client secrets, the page's config and the page on another.

Ports: Envoy's listeners on ``port`` and ``http_port`` (0 = any); with ``metrics_port`` P the engine 0 exports
on P, the picker on P + 1 and engine I ≥ 1 on P + 1 + I."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duplex.model.spec import ModelSource

from .envoy.config import EnvoyConfig
from .envoy.process import EnvoyProcess, check_port_free
from .process import EngineProcess, PickerProcess, serve_until_signal
from .spec import EngineSpec, GatewaySpec

HOST = "127.0.0.1"


def metrics_ports(metrics_port: int, replicas: int) -> tuple[list[int], int]:
    """(each engine's, the picker's) /metrics port; all 0 when ``metrics_port`` is."""
    if not metrics_port:
        return [0] * replicas, 0
    engines = [metrics_port if i == 0 else metrics_port + 1 + i for i in range(replicas)]
    return engines, metrics_port + 1


def picker_spec(engines: list[str], metrics_port: int) -> GatewaySpec:
    """The open picker in front of ``duplex up``'s engines (the front door's settings, ``GatewaySpec``: auth,
    quotas, polling)."""
    return GatewaySpec.model_validate(
        dict(host=HOST, engines=engines, open_access=True, metrics_port=metrics_port, health_interval_s=0.25)
    )


@dataclass
class LocalStack:
    """What ``duplex up`` runs besides the agent; ``start`` starts it all (or stops what it started)."""

    source: ModelSource
    engine_fields: dict[str, Any]
    replicas: int = 1
    port: int = 8080
    http_port: int | None = None
    metrics_port: int = 0
    envoy_concurrency: int = 1
    engines: list[EngineProcess] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    picker: PickerProcess | None = None
    picker_port: int = 0
    envoy: EnvoyProcess | None = None
    envoy_port: int = 0

    async def start(self) -> None:
        """Engines (in parallel, each with its Realtime port when ``http_port`` is set), then the picker (and
        its HTTP app) and Envoy. A failure (OSError or ValueError naming what failed) stops what had started."""
        check_port_free(HOST, self.port)  # Envoy would only log it: say it before anything starts
        if self.http_port:
            if self.http_port == self.port:
                raise ValueError(f"--http-port {self.http_port} is also --port: Envoy's two listeners need two ports")
            check_port_free(HOST, self.http_port)
        engine_ports, picker_metrics = metrics_ports(self.metrics_port, self.replicas)
        private = 0 if self.http_port is not None else None  # private ports, reached through Envoy only
        try:
            for i in range(self.replicas):
                spec = EngineSpec.model_validate({**self.engine_fields, "metrics_port": engine_ports[i]})
                self.engines.append(EngineProcess(spec, self.source.model_dump_json(), private))
            ports = await asyncio.gather(*(asyncio.to_thread(e.start) for e in self.engines))
            self.addresses = [f"{HOST}:{p}" for p in ports]
            self.picker = PickerProcess(picker_spec(self.addresses, picker_metrics), private)
            self.picker_port = await asyncio.to_thread(self.picker.start)
            cfg = EnvoyConfig(
                picker=f"{HOST}:{self.picker_port}",
                eds_path=Path("engines.json"),
                port=self.port,
                realtime=f"{HOST}:{self.picker.http_port}" if self.http_port is not None else "",
                realtime_port=self.http_port or 0,
            )
            websockets = [f"{HOST}:{e.http_port}" for e in self.engines if e.http_port]
            self.envoy = EnvoyProcess(
                cfg, self.addresses, concurrency=self.envoy_concurrency, realtime_engines=websockets
            )
            self.envoy_port = await asyncio.to_thread(self.envoy.start)
        except BaseException:
            await self.stop()
            raise

    def lines(self) -> list[str]:
        """What ``duplex up`` prints once ready: one line per engine, then the ``ready at`` line."""
        out = [
            f"duplex up: engine {i} at {addr} (pid {e.pid})"
            for i, (e, addr) in enumerate(zip(self.engines, self.addresses, strict=True))
        ]
        picker_pid = self.picker.pid if self.picker is not None else None
        envoy_pid = self.envoy.pid if self.envoy is not None else None
        out.append(
            f"duplex up: ready at {HOST}:{self.envoy_port} (Envoy pid {envoy_pid}; session picker "
            f"{HOST}:{self.picker_port} pid {picker_pid}); Ctrl-C to stop"
        )
        return out

    def exited(self) -> Awaitable[object]:
        """Done when Envoy exits on its own: ``duplex up`` then stops."""
        waits: list[Callable[[], object]] = []
        if self.envoy is not None and self.envoy.proc is not None:
            waits.append(self.envoy.proc.wait)

        async def first() -> None:
            tasks = [asyncio.ensure_future(asyncio.to_thread(w)) for w in waits]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)

        return first()

    async def stop(self) -> None:
        """The engines' Realtime WebSockets (closed 1001, going away, while Envoy still carries the close
        frames), Envoy (its streams end UNAVAILABLE), picker, engines — in that order."""
        await asyncio.gather(
            *(asyncio.to_thread(e.close_realtime, 5.0) for e in self.engines if e.http_port and e.proc.pid is not None)
        )
        if self.envoy is not None:
            code = self.envoy.proc.poll() if self.envoy.proc is not None else None
            if code is not None:
                print(f"duplex up: envoy exited (code {code}); stopping", flush=True)
            await asyncio.to_thread(self.envoy.stop)
        if self.picker is not None and self.picker.proc.pid is not None:
            await asyncio.to_thread(self.picker.stop, 5.0)
        await asyncio.gather(
            *(asyncio.to_thread(e.stop, 10.0) for e in self.engines if e.proc.pid is not None),
        )


async def serve(stack: LocalStack, stop_others: Callable[[], Awaitable[None]]) -> None:
    """Serve until a signal or Envoy's exit; then stop the stack and ``stop_others`` (the agent)."""

    async def stop() -> None:
        await stack.stop()
        await stop_others()
        print("duplex up: stopped", flush=True)

    await serve_until_signal(stop, also=stack.exited())
