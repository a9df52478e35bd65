"""Realtime upgrades the instant after an engine is SIGKILLed, before the session picker has seen it go, with
real processes: ``duplex up --replicas 2 --http-port 0`` (two engine processes, the picker, the real Envoy
binary). The picker may still place some upgrades on the dead engine; Envoy then carries each to the next engine
the picker listed, as it does a gRPC session's start. Every one is served by the survivor: no 503."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from duplex.loadtest.local import LocalUp

from .conftest import start_conversation

SESSIONS = 4
"""Upgrades opened at once after the kill (the survivor has room for all: ``--max-sessions``)."""


async def opened_at_once(url: str, n: int) -> list[dict[str, Any]]:
    """``n`` Realtime conversations started together: each one's ``duplex.session.ready`` (or the error that
    refused it), closed once all are in."""
    results = await asyncio.gather(*(start_conversation(url, "any") for _ in range(n)), return_exceptions=True)
    for r in results:
        if not isinstance(r, BaseException):
            await r[0].close()
    return [{"error": repr(r)} if isinstance(r, BaseException) else r[1] for r in results]


def test_upgrades_after_an_engine_is_killed_are_served_by_the_survivor(tmp_path: Path) -> None:
    args = ["--replicas", "2", "--no-agent", "--max-sessions", str(SESSIONS), "--http-port", "0"]
    with LocalUp(tmp_path / "up.log", args) as up:
        found = [up.wait_for(rf"duplex up: engine {i} at (127\.0\.0\.1:\d+) \(pid (\d+)\)") for i in range(2)]
        (dead, pid), survivor = (found[0].group(1), int(found[0].group(2))), found[1].group(1)
        os.kill(pid, signal.SIGKILL)
        readies = asyncio.run(opened_at_once(up.realtime, SESSIONS))
        assert [r.get("replica") for r in readies] == [survivor] * SESSIONS, (dead, readies, up.output()[-2000:])
