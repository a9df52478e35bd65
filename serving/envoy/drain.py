"""Envoy's graceful stop, as ``duplex envoy`` runs it: Envoy is its child, and a SIGTERM (a front pod replaced
or scaled down) becomes a drain through Envoy's admin API instead of Envoy's own immediate exit:

1. ``POST /healthcheck/fail``: Envoy's listeners start draining (HTTP/2 clients are told, with GOAWAY, to open
   their next stream elsewhere);
2. ``POST /drain_listeners``: the listeners close at once, so a new connection is refused and goes to another
   front pod, while the connections already open carry on;
3. Envoy keeps running until its live streams (conversations, Realtime WebSockets) have ended or
   ``gateway.drain_grace_s`` has passed, then it is stopped.

The pod's ``terminationGracePeriodSeconds`` is rendered above that grace (``operator/render/front.py``)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

ADMIN_LISTENER = "admin"
"""Stat prefix of Envoy's admin HTTP connection manager: its own requests are not live streams."""
POLL_S = 0.1
"""How often the drain looks at Envoy's live streams again."""


class Admin:
    """Envoy's admin API at ``address`` (``HOST:PORT`` on loopback)."""

    def __init__(self, address: str, timeout_s: float = 2.0) -> None:
        self.address, self.timeout_s = address, timeout_s

    def _call(self, path: str, method: str) -> str:
        request = urllib.request.Request(f"http://{self.address}{path}", method=method)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
            return str(r.read().decode())

    def post(self, path: str) -> str:
        return self._call(path, "POST")

    def stats(self, pattern: str) -> dict[str, int]:
        """Envoy's counters and gauges whose names match the regular expression ``pattern``."""
        stats = json.loads(self._call(f"/stats?format=json&filter={pattern}", "GET"))
        return {str(s["name"]): int(s["value"]) for s in stats.get("stats", []) if "value" in s and "name" in s}

    def live_streams(self) -> int:
        """Downstream requests open on Envoy's own listeners (gRPC streams and WebSockets; not the admin's)."""
        active = self.stats("downstream_rq_active$")
        return sum(v for name, v in active.items() if not name.startswith(f"http.{ADMIN_LISTENER}."))


LISTENERS_ACTIVE = "listener_manager.total_listeners_active"
LISTENERS_STOPPED = "listener_manager.listener_stopped"


def stop_taking(
    admin: Admin,
    deadline_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], object] = time.sleep,
) -> bool:
    """Start the drain and close the listeners; True once Envoy counts every listener stopped (its workers
    close the sockets after the admin call returns), False if that took longer than ``deadline_s``."""
    listeners = admin.stats(f"^{LISTENERS_ACTIVE}$").get(LISTENERS_ACTIVE, 0)
    admin.post("/healthcheck/fail")
    admin.post("/drain_listeners")
    end = clock() + deadline_s
    while admin.stats(f"^{LISTENERS_STOPPED}$").get(LISTENERS_STOPPED, 0) < listeners:
        if clock() >= end:
            return False
        wait(POLL_S)
    return True


def wait_drained(
    admin: Admin,
    grace_s: float,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], object] = time.sleep,
) -> int:
    """Wait (polling every ``POLL_S``) until no stream is live or ``grace_s`` has passed on ``clock``; the
    streams still live then (0 = drained)."""
    end = clock() + grace_s
    while (live := admin.live_streams()) and clock() < end:
        wait(POLL_S)
    return live


class Supervisor:
    """Envoy (``command``) as a child that a SIGTERM or SIGINT drains (:func:`drain`) before it stops."""

    def __init__(self, command: list[str], admin_file: Path, grace_s: float, say: Callable[[str], None]) -> None:
        self.command, self.admin_file, self.grace_s, self.say = command, admin_file, grace_s, say
        self.stop = threading.Event()

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def run(self, preexec: Callable[[], None] | None = None) -> int:
        """Run Envoy until it exits (its exit code) or a signal drains and stops it (Envoy's code then)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signalled)
        # its own session: a terminal's Ctrl-C reaches this process only, which drains Envoy
        proc = subprocess.Popen(
            [*self.command, "--admin-address-path", str(self.admin_file)], start_new_session=True, preexec_fn=preexec
        )
        while not self.stop.is_set():
            try:
                return proc.wait(POLL_S)
            except subprocess.TimeoutExpired:
                continue
        address = self.admin_file.read_text().strip() if self.admin_file.exists() else ""
        if address and proc.poll() is None:
            admin = Admin(address)
            try:
                closed = stop_taking(admin)
                refused = "new connections refused" if closed else "listeners still closing"
                self.say(f"draining: {refused}; live streams get up to {self.grace_s:g} s")
                left = wait_drained(admin, self.grace_s)
                self.say("drained" if not left else f"drain grace over: {left} live stream(s) closed")
            except (OSError, ValueError) as e:  # Envoy's admin gone or answering nonsense: stop it anyway
                self.say(f"drain failed ({e}); stopping envoy")
        if proc.poll() is None:
            proc.terminate()
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
