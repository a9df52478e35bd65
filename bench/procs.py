"""``duplex`` subprocesses for the fault benchmarks (``faults.py``, ``envoy_restart.py``): start one, wait for
a line of its output, stop it."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time

DUPLEX = [sys.executable, "-c", "from duplex.cli import main; main()"]


class Proc:
    """A ``duplex`` subprocess whose output lines a thread collects, so a caller can wait for one."""

    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen([*DUPLEX, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, deadline_s: float = 120.0) -> re.Match[str]:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if m := re.search(pattern, line):
                return m
        raise TimeoutError(f"no line matching {pattern!r} within {deadline_s:.0f} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` and wait; killed when it has not exited 30 s later."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
