"""A local ``redis-server`` on a free loopback port: used by ``duplex up`` and the tests.

The server is found on PATH; it runs without persistence unless ``data_dir`` is given (then with an
append-only file fsynced on every write, so a restart on the same port keeps every stream).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..ports import free_port


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1."""

    def __init__(self, port: int = 0, data_dir: Path | None = None, host: str = "127.0.0.1") -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisServerError(
                "redis-server not found on PATH (Debian package redis-server; bash scripts/setup.sh installs it)"
            )
        self.exe, self.host, self.data_dir = exe, host, data_dir
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start it and return once it answers PING (raises RedisServerError after ``timeout_s``)."""
        args = [self.exe, "--port", str(self.port), "--bind", self.host, "--save", ""]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while not _ping(self.host, self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RedisServerError(f"redis-server exited with {self.proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisServerError(f"redis-server did not answer PING on port {self.port} in {timeout_s}s")
            time.sleep(0.02)  # polling a child process's readiness; there is no event to wait on

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (redis flushes its append-only file), then SIGKILL if it does not exit."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
