"""Process lifecycle shared by the serving commands: serve until SIGINT/SIGTERM, and the engines, the session
picker and the agent worker in processes of their own for ``duplex up`` (each exits with its parent): none of
them shares an interpreter lock with an engine's event loop and its step thread."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
import threading
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection

from . import logs
from .spec import AgentSpec, EngineSpec, GatewaySpec


async def serve_until_signal(stop: Callable[[], Awaitable[object]], also: Awaitable[object] | None = None) -> None:
    """Wait for SIGINT/SIGTERM (or for ``also`` to finish), then run ``stop``."""
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, ev.set)
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(ev.wait())]
    if also is not None:
        waiters.append(asyncio.ensure_future(also))
    _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for p in pending:
        p.cancel()
    await stop()


def _parent_gone(conn: Connection, on_message: Callable[[object], None] | None = None) -> Awaitable[object]:
    """Set when the parent goes away (its end of the pipe closes), watched by a daemon thread that never
    holds up the exit. Without ``on_message`` any message counts as going away; with it, each message is
    handed to it on the event loop."""
    loop, gone = asyncio.get_running_loop(), asyncio.Event()

    def watch_parent() -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                message = conn.recv()
                if on_message is None:
                    break
                loop.call_soon_threadsafe(on_message, message)
        loop.call_soon_threadsafe(gone.set)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    return gone.wait()


def _agent_main(spec_json: str, redis_url: str, conn: Connection) -> None:
    """Child process: one agent worker pool; reports ready once it reached Redis, drains on a signal or when
    the parent goes away."""
    logs.setup(json_lines=False)
    from .agent.tools import registry_for
    from .agent.worker import AgentWorker

    async def main() -> None:
        spec = AgentSpec.model_validate_json(spec_json)
        try:
            worker = AgentWorker(spec, redis_url, registry_for(spec))
        except ValueError as e:
            conn.send(("error", str(e)))
            return
        run = asyncio.create_task(worker.run(), name="agent-worker")
        await worker.ready.wait()
        conn.send(("ready", worker.consumer))

        async def stop() -> None:
            worker.stop()
            await run
            await worker.drain(spec.drain_grace_s)

        await serve_until_signal(stop, also=_parent_gone(conn))

    asyncio.run(main())


CLOSE_REALTIME = "close-realtime"
"""Told to an engine process before Envoy stops: close its Realtime WebSockets (1001, going away) while Envoy
still carries the close frames."""


def _engine_main(spec_json: str, source_json: str, http_port: int | None, conn: Connection) -> None:
    """Child process: one engine replica (it loads its model here), reports its ports (gRPC, Realtime
    WebSocket), stops on a signal or when the parent goes away."""
    logs.setup(json_lines=False)
    from duplex.model.spec import ModelSource

    from .engine.server import EngineServer

    async def main() -> None:
        try:
            spec, source = EngineSpec.model_validate_json(spec_json), ModelSource.model_validate_json(source_json)
            # any free port: the parent reads it back
            server = EngineServer(spec, source, bind_port=0, http_bind_port=http_port)
            port = await server.start()
        except (ValueError, OSError) as e:
            conn.send(("error", str(e)))
            return
        conn.send(("ready", (port, server.http_port)))
        tasks: set[asyncio.Task[None]] = set()

        async def close_realtime() -> None:
            conn.send(("closed", await server.close_realtime()))

        def on_message(message: object) -> None:
            if message == CLOSE_REALTIME:
                tasks.add(asyncio.create_task(close_realtime()))

        # a SIGTERM drains (``engine.drain_grace_s``); when duplex up stops, Envoy went first and took the streams
        await serve_until_signal(lambda: server.stop(spec.drain_grace_s), also=_parent_gone(conn, on_message))

    asyncio.run(main())


def _picker_main(spec_json: str, http_port: int | None, conn: Connection) -> None:
    """Child process: the session picker (Envoy's ext_authz service, and its HTTP app with ``http_port``);
    reports its ports (gRPC, HTTP), stops on a signal or when the parent goes away."""
    logs.setup(json_lines=False)
    from .picker.server import PickerServer

    async def main() -> None:
        try:
            picker = PickerServer(GatewaySpec.model_validate_json(spec_json), bind_port=0, http_bind_port=http_port)
            port = await picker.start()
        except (ValueError, OSError) as e:
            conn.send(("error", str(e)))
            return
        conn.send(("ready", (port, picker.http_port)))
        await serve_until_signal(picker.stop, also=_parent_gone(conn))

    asyncio.run(main())


class ServerProcess:
    """A server in a child process (spawned, so it shares nothing with the engine's interpreter) that reports
    ``("ready", value)`` or ``("error", message)`` through a pipe."""

    def __init__(self, name: str, target: Callable[..., None], *args: object) -> None:
        self.name = name
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(*args, child), name=f"duplex-{name}", daemon=True)

    def start(self, timeout_s: float = 60.0) -> object:
        """Start it and return what it reported; raises its own error if it cannot start."""
        self.proc.start()
        if not self._conn.poll(timeout_s):
            self.proc.kill()
            raise OSError(f"{self.name} process did not start within {timeout_s:.0f} s")
        try:
            kind, value = self._conn.recv()
        except EOFError:
            self.proc.join(5)
            raise OSError(f"{self.name} process exited with code {self.proc.exitcode} before it was ready") from None
        if kind == "error":
            self.proc.join(5)
            raise ValueError(value)
        return value

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def wait(self) -> int | None:
        """Block until the process exits; its exit code."""
        self.proc.join()
        return self.proc.exitcode

    def stop(self, timeout_s: float) -> None:
        """SIGTERM = drain (live conversations get ``drain_grace_s``), then make sure it is gone."""
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class AgentProcess(ServerProcess):
    """One ``duplex agent`` worker pool in a child process; ``start`` returns once it has reached Redis."""

    def __init__(self, spec: AgentSpec, redis_url: str) -> None:
        super().__init__("agent", _agent_main, spec.model_dump_json(), redis_url)


def _two_ports(value: object) -> tuple[int, int]:
    assert isinstance(value, tuple) and all(isinstance(v, int) for v in value)
    first, second = value
    return first, second


class EngineProcess(ServerProcess):
    """One engine replica in a child process; ``start`` returns its bound gRPC port and sets ``http_port``
    (its Realtime WebSocket endpoint's with ``http_port`` given: 0 = any free port; else 0 = not served)."""

    def __init__(self, spec: EngineSpec, source_json: str, http_port: int | None = None) -> None:
        super().__init__("engine", _engine_main, spec.model_dump_json(), source_json, http_port)
        self.spec, self.http_port = spec, 0

    def start(self, timeout_s: float = 300.0) -> int:
        port, self.http_port = _two_ports(super().start(timeout_s))
        return port

    def close_realtime(self, timeout_s: float) -> int:
        """Have the engine close its Realtime WebSockets (1001) and wait for it; how many it closed (0 when it
        did not answer within ``timeout_s``)."""
        if not self.proc.is_alive():
            return 0
        self._conn.send(CLOSE_REALTIME)
        if not self._conn.poll(timeout_s):
            return 0
        kind, closed = self._conn.recv()
        return int(closed) if kind == "closed" else 0


class PickerProcess(ServerProcess):
    """The session picker in a child process; ``start`` returns its bound gRPC port and sets ``http_port``
    (its HTTP app's with ``http_port`` given: 0 = any free port; else 0 = not served)."""

    def __init__(self, spec: GatewaySpec, http_port: int | None = None) -> None:
        super().__init__("picker", _picker_main, spec.model_dump_json(), http_port)
        self.spec, self.http_port = spec, 0

    def start(self, timeout_s: float = 60.0) -> int:
        port, self.http_port = _two_ports(super().start(timeout_s))
        return port
