"""``duplex up`` in a subprocess for the benchmark and the tests: its address from the "ready at" line, its
output in a log file, and a stop that waits (with a deadline) for it and every process it started to exit.

Why a log file and not a pipe: a pipe nobody reads fills at 64 KiB, and then every ``write`` of the server's
logging blocks — the engine's event loop first, so conversations stall ("no turns" after an overload step,
whose sessions log a few hundred lines) and a stop never finishes (its cancelled streams log more). A file
never blocks the writer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import psutil

DUPLEX = [sys.executable, "-c", "from duplex.cli import main; main()"]
READY = re.compile(r"ready at (\S+)")


class LocalUpError(RuntimeError):
    """``duplex up`` did not become ready, or did not exit in time."""


class LocalUp:
    """``duplex up --port 0 ARGS…`` (or ``command``) with stdout and stderr appended to ``log``."""

    def __init__(self, log: Path, args: tuple[str, ...] = (), command: list[str] | None = None) -> None:
        self.log = log
        self.command = command if command is not None else [*DUPLEX, "up", "--port", "0", *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.children: list[psutil.Process] = []
        """The processes it started (gateway, agent, redis-server…), as seen once it was ready."""

    def start(self, deadline_s: float = 180.0) -> str:
        """Start it and return HOST:PORT from its "ready at" line (read from the log until ``deadline_s``)."""
        start = self.log.stat().st_size if self.log.exists() else 0  # an earlier run's lines are not ours
        with self.log.open("ab") as out:
            # its own session: a stop reaches only this tree, and a leftover child keeps the group id
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if m := READY.search(self.log.read_bytes()[start:].decode(errors="replace")):
                self.address = m.group(1)
                self.children = psutil.Process(self.proc.pid).children(recursive=True)
                return self.address
            if self.proc.poll() is not None:
                break
            try:
                self.proc.wait(timeout=0.2)  # returns early if it exits; else look at the log again
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        raise LocalUpError(f"duplex up: no 'ready at' line within {deadline_s:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def interrupt(self, deadline_s: float = 60.0) -> float:
        """SIGINT (Ctrl-C) and wait until it and every process it started have exited; the seconds it took.
        Raises LocalUpError (after killing what is left) when that takes longer than ``deadline_s``."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise LocalUpError(f"duplex up did not exit within {deadline_s:.0f} s of SIGINT:\n{self.tail()}") from None
        _, alive = psutil.wait_procs(self.children, timeout=max(0.1, deadline_s - (time.monotonic() - t0)))
        if alive:
            self.kill()
            raise LocalUpError(f"duplex up exited but left {[p.pid for p in alive]} running")
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL the whole tree (its process group and the children it had)."""
        if self.proc is None:
            return
        for p in self.children:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self) -> LocalUp:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.interrupt()
            except LocalUpError:
                pass  # killed; the caller's own error (if any) is the one to see
        elif self.proc is not None:
            self.kill()
