"""Envoy started from a fresh child process: ``EnvoyProcess`` forks (its ``preexec_fn`` ties Envoy to its
parent), and a test process that runs gRPC servers of its own on other threads must not fork while they poll
(grpc's fork handlers then abort the child). The child holds Envoy until the test ends."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection

from duplex.serving.envoy.config import EnvoyConfig
from duplex.serving.envoy.process import EnvoyProcess


def _main(cfg: EnvoyConfig, engines: list[str], realtime_engines: list[str], conn: Connection) -> None:
    envoy = EnvoyProcess(cfg, engines, realtime_engines=realtime_engines)
    try:
        envoy.start()
    except OSError as e:
        conn.send(("error", str(e)))
        return
    conn.send(("ready", (envoy.port, envoy.realtime_port, envoy.admin)))
    try:
        conn.recv()  # the test ends (or goes away)
    except EOFError:
        pass
    envoy.stop()


class EnvoyChild:
    """``EnvoyProcess`` for ``cfg`` in a spawned process; ``port``/``realtime_port`` once started."""

    def __init__(self, cfg: EnvoyConfig, engines: list[str], realtime_engines: list[str]) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_main, args=(cfg, engines, realtime_engines, child), daemon=True)
        self.port = self.realtime_port = 0
        self.admin = ""
        """HOST:PORT of its admin API (``/stats``, ``/ready``) once started."""

    def start(self, timeout_s: float = 60.0) -> None:
        self.proc.start()
        if not self._conn.poll(timeout_s):
            self.proc.kill()
            raise OSError(f"envoy child did not start within {timeout_s:.0f} s")
        kind, value = self._conn.recv()
        if kind == "error":
            raise OSError(value)
        self.port, self.realtime_port, self.admin = value

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self._conn.send("stop")
            except OSError:  # the child is going away already
                pass
            self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
