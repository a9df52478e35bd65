"""After an overload the same ``duplex up`` still serves, and it stops on SIGINT while overloaded.

Found with ``bench/loadtest.py``, which read ``duplex up``'s output through a pipe only until the "ready at"
line: after an overload step's few hundred log lines the 64 KiB pipe was full, every log write of the server
blocked (conversations stalled: "no turns" at 4/2/1 users; a stop never finished). ``LocalUp`` (used by the
benchmark and here) sends that output to a file. Small ``--max-sessions`` makes the overload cheap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from duplex.loadtest.local import DUPLEX, LocalUp

SLOTS = 2
OVERLOAD_USERS = 6
PIPE_BYTES = 64 * 1024


def loadtest(target: str, users: int, run_time_s: int, out: Path, *extra: str) -> dict[str, object]:
    r = subprocess.run(
        [
            *DUPLEX,
            "loadtest",
            "--target",
            target,
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            f"{run_time_s}s",
            "--slo-p50",
            "4.0",
            "--max-error-rate",
            "1.0",
            "--max-client-lag",
            "1.0",
            "--json",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DUPLEX_CACHE": str(out.parent / "cache")},
    )
    assert r.returncode in (0, 1), r.stdout + r.stderr
    stats: dict[str, object] = json.loads(out.read_text())
    return stats


@pytest.mark.slow
def test_after_an_overload_step_a_small_step_measures_turns_and_sigint_stops_it(tmp_path: Path) -> None:
    up = LocalUp(tmp_path / "up.log", ("--max-sessions", str(SLOTS)))
    up.start()
    try:
        over = loadtest(up.address, OVERLOAD_USERS, 8, tmp_path / "over.json")
        # more users than slots: the ones left out are refused (RESOURCE_EXHAUSTED), not queued
        assert "RESOURCE_EXHAUSTED" in over["error_codes"]  # type: ignore[operator]
        # seed 1: user 0 starts with conversation 1, whose first user turn ends 3 s in
        small = loadtest(up.address, 1, 9, tmp_path / "small.json", "--seed", "1")
        assert small["turns"] > 0, small  # type: ignore[operator]
        assert small["errors"] == 0, small
        # SIGINT while more clients than slots hold conversations: it and its children exit in time
        started = up.output().count("session started")
        flood = subprocess.Popen(
            [
                *DUPLEX,
                "loadtest",
                "--target",
                up.address,
                "--users",
                str(OVERLOAD_USERS),
                "--spawn-rate",
                "6",
                "--run-time",
                "60s",
                "--max-client-lag",
                "5",
                "--seed",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "DUPLEX_CACHE": str(tmp_path / "cache")},
        )
        try:
            # the engine holds all of its slots (+ the flood's preflight session)
            up.wait_for("session started", deadline_s=90.0, count=started + SLOTS + 1)
            up.stop(signal.SIGINT, deadline_s=45.0)
        finally:
            flood.kill()
            flood.wait()
        assert up.stop_s < 45.0
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in up.children)
    finally:
        up.kill()


def test_local_up_never_blocks_the_server_on_its_output(tmp_path: Path) -> None:
    """A server that logs more than a pipe holds after its "ready at" line still runs on (read through a pipe
    only until that line, as the benchmark used to, it blocked in ``write`` for good)."""
    done = tmp_path / "done"
    script = (
        "import signal\n"
        # a server handles SIGINT itself (duplex up does); a child of a background shell inherits it ignored
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "print('x: ready at 127.0.0.1:1', flush=True)\n"
        f"print('log line ' * {PIPE_BYTES // 4}, flush=True)\n"
        f"open({str(done)!r}, 'w').close()\n"
        "signal.pause()\n"
    )
    up = LocalUp(tmp_path / "out.log", command=[sys.executable, "-c", script])
    try:
        assert up.start(deadline_s=30.0) == "127.0.0.1:1"
        end = time.monotonic() + 30.0
        while not done.exists() and time.monotonic() < end:
            time.sleep(0.05)  # the poll's interval; the state waited for is the marker file
        assert done.exists(), "the child blocked writing its output"
        assert up.log.stat().st_size > PIPE_BYTES
        up.stop(signal.SIGINT, deadline_s=30.0)
        assert up.stop_s < 30.0
    finally:
        up.kill()
