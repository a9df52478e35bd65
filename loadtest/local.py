"""``duplex up`` in a subprocess, the one harness for the tests and the benchmarks: its addresses from the
"ready at" (and "realtime at") line, read with a deadline, its output in a log file, a wait for any line of
it, and a stop that waits (with a deadline) for it and every process it started to exit.

Why a log file and not a pipe: a pipe nobody reads fills at 64 KiB, and then every ``write`` of the server's
logging blocks — the engine's event loop first, so conversations stall ("no turns" after an overload step,
whose sessions log a few hundred lines) and a stop never finishes (its cancelled streams log more). A file
never blocks the writer, and costs the process that started it nothing (a benchmark's clients run there)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import psutil

DUPLEX = [sys.executable, "-c", "from duplex.cli import main; main()"]
"""``duplex`` as a command line, run by this interpreter (its environment, no console script needed)."""
READY = re.compile(r"ready at (\S+)")
REALTIME = re.compile(r"realtime at (wss?://\S+)")
POLL_S = 0.05
"""How often a wait looks at the log again (a wait returns as soon as the process exits, too)."""


class LocalUpError(RuntimeError):
    """``duplex up`` did not become ready, did not print a line waited for, or did not exit in time."""


class LocalUp:
    """``duplex up --port 0 ARGS…`` (or ``command``) with stdout and stderr appended to ``log`` (a new file in
    the temporary directory when none is given; kept, so a failure's log can be read).

    ``start()`` returns the front door's HOST:PORT (``address``: Envoy's listener); with ``--http-port`` among
    ``args`` it also waits for the Realtime endpoint's ``ws://`` URL (``realtime``). ``wait_for`` waits for any
    line, ``lines`` and ``output()`` are what it printed, ``proc`` is the ``Popen``, ``stop`` signals it and
    waits. As a context manager it is started on entry and stopped (or killed) on exit."""

    def __init__(self, log: Path | None = None, args: Sequence[str] = (), command: list[str] | None = None) -> None:
        if log is None:
            fd, name = tempfile.mkstemp(prefix="duplex-up-", suffix=".log")
            os.close(fd)
            log = Path(name)
        self.log = log
        self.command = command if command is not None else [*DUPLEX, "up", "--port", "0", *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        """HOST:PORT of the front door (Envoy's listener in front of the engines), from the "ready at" line."""
        self.realtime = ""
        """The Realtime endpoint's ws:// URL from the "realtime at" line (with ``--http-port`` only)."""
        self.children: list[psutil.Process] = []
        """The processes it started (engines, session picker, Envoy, agent, redis-server…), as seen once it was
        ready."""
        self.lines: list[str] = []
        """Its output lines so far (this run's only; whole lines, each with its newline)."""
        self.stop_s = 0.0
        """How long the last ``stop`` took, from the signal to the exit of the last process."""
        self._offset = 0
        self._partial = b""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def serves_realtime(self) -> bool:
        return any(a == "--http-port" or a.startswith("--http-port=") for a in self.command)

    def start(self, deadline_s: float = 180.0) -> str:
        """Start it and return HOST:PORT from its "ready at" line; with ``--http-port``, wait for its "realtime at"
        line too. Past ``deadline_s`` (or when it exits first) it is killed and LocalUpError raised."""
        self._offset = self.log.stat().st_size if self.log.exists() else 0  # an earlier run's lines are not ours
        self.lines, self._partial = [], b""
        with self.log.open("ab") as out:
            # its own session: a stop reaches only this tree, and a leftover child keeps the group id
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + deadline_s
        try:
            self.address = self.wait_for(READY, deadline_s).group(1)
            if self.serves_realtime:
                self.realtime = self.wait_for(REALTIME, max(0.0, end - time.monotonic())).group(1)
        except LocalUpError as e:
            self.kill()
            raise LocalUpError(f"duplex up did not become ready within {deadline_s:.0f} s: {e}") from None
        self.children = psutil.Process(self.proc.pid).children(recursive=True)
        return self.address

    def _read(self, final: bool) -> None:
        """Take in what the log gained since the last look: whole lines only, unless ``final`` (it has exited)."""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *done, self._partial = (self._partial + data).split(b"\n")
        if final and self._partial:
            done, self._partial = [*done, self._partial], b""
        self.lines += [line.decode(errors="replace") + "\n" for line in done]

    def wait_for(self, pattern: str | re.Pattern[str], deadline_s: float = 60.0, count: int = 1) -> re.Match[str]:
        """The ``count``-th line of its output (from the start of this run) that matches ``pattern``, waited for
        until ``deadline_s``; LocalUpError (with the output's tail) when it has not come by then, or when the
        process exited without printing it."""
        assert self.proc is not None, "not started"
        rx = re.compile(pattern)
        found: list[re.Match[str]] = []
        scanned = 0
        end = time.monotonic() + deadline_s
        while True:
            exited = self.proc.poll() is not None  # looked at first: what it wrote before it exited is in the log
            self._read(final=exited)
            found += [m for line in self.lines[scanned:] if (m := rx.search(line))]
            scanned = len(self.lines)
            if len(found) >= count:
                return found[count - 1]
            left = end - time.monotonic()
            if exited or left <= 0:
                why = f"it exited (code {self.proc.returncode})" if exited else f"within {deadline_s:.0f} s"
                seen = f"{len(found)}× " if count > 1 else ""
                raise LocalUpError(f"no {seen}line matching {rx.pattern!r} ({why}); output:\n{self.tail()}")
            try:
                self.proc.wait(timeout=min(POLL_S, left))  # returns early if it exits; else look at the log again
            except subprocess.TimeoutExpired:
                pass

    def output(self) -> str:
        """What it printed in this run so far (to the end, once it has exited)."""
        if self.proc is not None:
            self._read(final=self.proc.poll() is not None)
        return "".join(self.lines)

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def stop(self, sig: int = signal.SIGINT, deadline_s: float = 60.0) -> int:
        """Send ``sig`` (SIGINT: Ctrl-C) and wait until it and every process it started have exited; its exit
        code (the seconds that took in ``stop_s``). When that takes longer than ``deadline_s`` what is left is
        killed and LocalUpError raised."""
        assert self.proc is not None, "not started"
        t0 = time.monotonic()
        if self.proc.poll() is None:
            try:  # the processes it has now, too (started after it was ready)
                now = psutil.Process(self.proc.pid).children(recursive=True)
                self.children += [p for p in now if p not in self.children]
            except psutil.NoSuchProcess:
                pass
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.kill()
            name = signal.Signals(sig).name
            raise LocalUpError(f"duplex up did not exit within {deadline_s:.0f} s of {name}:\n{self.tail()}") from None
        _, alive = psutil.wait_procs(self.children, timeout=max(0.1, deadline_s - (time.monotonic() - t0)))
        if alive:
            self.kill()
            raise LocalUpError(f"duplex up exited but left {[p.pid for p in alive]} running")
        self.stop_s = time.monotonic() - t0
        return code

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
                self.stop()
            except LocalUpError:
                pass  # killed; the caller's own error (if any) is the one to see
        elif self.proc is not None:
            self.kill()
