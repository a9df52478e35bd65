"""How long a SIGKILLed engine still looks alive: one ``duplex engine`` (tiny preset) as a subprocess, the
session picker's ``Router`` (health watch on) in this process, then SIGKILL. Printed, in ms from the kill, in
the order they happened: the first TCP connect to the engine's port that still succeeded, the picker's
``mark_down``, the port refusing connections, the process reaped.

    python bench/probes/kill_window.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

from duplex.serving.picker.routing import Replica, Router

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import Proc

ENGINE = ["engine", "--port", "0", "--set", "engine.host=127.0.0.1", "--set", "engine.metrics_port=0"]


async def _connects(host: str, port: int) -> bool:
    """Whether a TCP connect to HOST:PORT is accepted now (refused or reset: False)."""
    s = socket.socket()
    s.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(s, (host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


async def one_run() -> dict[str, float]:
    engine = Proc(ENGINE)
    address = engine.wait_for(r"engine serving \S+ on (127\.0\.0\.1:\d+)").group(1)
    host, port = address.rsplit(":", 1)
    router = Router([address], 0.25, 4 << 20, watch_health=True)
    await router.start()
    marks: dict[str, float] = {}
    down = router.mark_down

    def mark_down(r: Replica, why: str) -> None:
        marks.setdefault(f"picker mark_down ({why})", time.monotonic())
        down(r, why)

    router.mark_down = mark_down
    t0 = time.monotonic()
    engine.p.send_signal(signal.SIGKILL)

    async def watch_port() -> None:
        while await _connects(host, int(port)):
            marks.setdefault("a connect still accepted", time.monotonic())
        marks["port refuses"] = time.monotonic()

    async def reaped() -> None:
        await asyncio.to_thread(engine.p.wait)
        marks["process reaped"] = time.monotonic()

    await asyncio.gather(watch_port(), reaped())
    while router.replicas[0].healthy:
        await asyncio.sleep(0.001)
    await router.close()
    return {k: (v - t0) * 1e3 for k, v in marks.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for i in range(args.runs):
        marks = asyncio.run(one_run())
        print(f"run {i + 1}: " + ", ".join(f"{k} {ms:.1f} ms" for k, ms in sorted(marks.items(), key=lambda kv: kv[1])))


if __name__ == "__main__":
    main()
