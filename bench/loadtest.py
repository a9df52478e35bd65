"""Load-test benchmark: ``duplex loadtest`` at 1, 16 and 64 users against ``duplex up``, then the capacity
search; writes bench/results/load_test.json, the ``## Load test`` section of docs/benchmarks.md.

    python bench/loadtest.py                          # 1,16,64 users × 60 s, then --find-capacity (60 s steps)
    python bench/loadtest.py --users 1,16 --run-time 30s --no-capacity --no-write

Conversations last at least 60 s (``--min-conversation-s 60``: a long default corpus, built once), so each
user holds one conversation through a whole 60 s run and the figures are the steady state, not a run of
session starts. ``duplex up`` writes its log to a file (``--up-log``), never to an unread pipe, whose 64 KiB
would fill and stall the server (docs/loadtest.md, "Against `duplex up`").

Each run is the real command (``duplex loadtest --json``) with the gate's targets set to the design card's
(turn-taking p50 ≤ 0.30 s, p95 ≤ 0.45 s, barge-in p50 ≤ 0.25 s); a figure that misses its target is marked
so in the table. The capacity search gates on the platform's SLO instead (``SLO_GATE``). A run whose load
generator fell behind real time (exit 3) is reported as such, without figures: put the load generator on
another machine (``--target``) when that happens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from report import command, machine, result_name, write_result

from duplex.loadtest.local import LocalUp

DUPLEX = [sys.executable, "-c", "from duplex.cli import main; main()"]
TARGETS = {"turn_latency_p50": 0.30, "turn_latency_p95": 0.45, "barge_in_p50": 0.25}
GATE = ["--slo-p50", "0.30", "--slo-p95", "0.45", "--slo-barge-in-p50", "0.25", "--max-error-rate", "0.01"]
SLO_GATE = ["--slo-p50", "0.40", "--max-error-rate", "0.01"]
"""The capacity search's gate: the platform's 0.40 s turn-taking SLO (``duplex loadtest``'s defaults). The
design card's targets above are the model's; where it misses them even alone, a search against them says 0."""


def loadtest(target: str, args: list[str], out: Path, gate: list[str] = GATE) -> tuple[int, dict[str, Any]]:
    r = subprocess.run([*DUPLEX, "loadtest", "--target", target, *gate, *args, "--json", str(out)], check=False)
    if r.returncode == 2:
        raise SystemExit(f"duplex loadtest {' '.join(args)}: failed (exit 2), see its message above")
    return r.returncode, json.loads(out.read_text()) if out.exists() else {}


def processes(users: int) -> int:
    """Locust processes for a run: one per 16 users, at most half the cores (the server has the rest)."""
    return max(1, min(users // 16, (os.cpu_count() or 2) // 2))


def cell(stats: dict[str, Any], key: str) -> str:
    v = stats.get(key)
    if v is None:
        return "–"
    return f"{v:.3f}" + (f" (misses ≤ {TARGETS[key]:.2f})" if v > TARGETS[key] else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="1,16,64")
    ap.add_argument("--run-time", default="60s")
    ap.add_argument("--capacity-run-time", default="60s")
    ap.add_argument("--no-capacity", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--min-conversation-s", default="60", help="shortest conversation the users hold (s)")
    ap.add_argument("--up-log", type=Path, default=Path(tempfile.gettempdir()) / "bench-loadtest-up.log")
    ap.add_argument("--up-args", default="", help="more `duplex up` flags, e.g. --no-batch-invariant")
    ap.add_argument(
        "--section", default="Load test", help="docs/benchmarks.md section to write (bench/results/ file: its name)"
    )
    a = ap.parse_args()
    long = ["--min-conversation-s", a.min_conversation_s]
    a.up_log.unlink(missing_ok=True)
    up = LocalUp(a.up_log, tuple(a.up_args.split()))
    target = up.start()
    rows, capacity, at_capacity = [], None, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in (int(x) for x in a.users.split(",")):
                rate = str(max(1, n // 4))
                procs = str(processes(n))
                code, s = loadtest(
                    target,
                    ["--users", str(n), "--spawn-rate", rate, "--run-time", a.run_time, *long, "--processes", procs],
                    Path(tmp) / f"u{n}.json",
                )
                if code == 3 or not s:
                    rows.append(
                        f"| {n} | load generator fell behind (client lag {s.get('client_lag_max', 0):.3f} s) | | | | |"
                    )
                    continue
                rows.append(
                    f"| {n} | {cell(s, 'turn_latency_p50')} | {cell(s, 'turn_latency_p95')} | "
                    f"{cell(s, 'barge_in_p50')} | {s['turns']} / {s['barge_ins']} | {s['errors']} | "
                    f"{s['client_lag_max']:.3f} |"
                )
            if not a.no_capacity:
                _, s = loadtest(
                    target,
                    [
                        "--find-capacity",
                        "--users",
                        "4",
                        "--spawn-rate",
                        "8",
                        "--max-users",
                        "128",
                        "--run-time",
                        a.capacity_run_time,
                        *long,
                        "--processes",
                        str(processes(128)),
                    ],
                    Path(tmp) / "capacity.json",
                    SLO_GATE,
                )
                capacity, at_capacity = s.get("capacity"), s
    finally:
        up.stop(deadline_s=60.0)
        print(f"duplex up stopped {up.stop_s:.1f} s after SIGINT (log: {a.up_log})")
    up_cmd = " ".join(["duplex up", *a.up_args.split()])
    setup = (
        "`duplex loadtest` (Locust, live-microphone pacing, 200 ms chunks, shipped tiny checkpoint) against "
        f"`{up_cmd}` on the same machine, conversations ≥ {a.min_conversation_s} s (one per user per run). "
        "Seconds; turn-taking = first model speech heard − user's end of speech (capture clock); targets from "
        "docs/design.md. The load generator shares the machine's cores with the server."
    )
    table = [
        "| users | turn-taking p50 | p95 | barge-in p50 | turns / barge-ins | errors | client lag max |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    body = [f"`{command()}` — {machine()}", "", setup, "", *table]
    found = ""
    if capacity is not None:
        steps = ", ".join(f"{st['users']}: {'pass' if st['passed'] else 'fail'}" for st in capacity["steps"])
        found = (
            "Capacity (largest concurrency holding the platform's SLO: turn-taking p50 ≤ 0.40 s, errors ≤ 1 %): "
            f"**{capacity['users']} users** "
            f"({capacity['per_replica']:g} per replica; search stopped by {capacity['limited_by']}; "
            f"steps {steps})."
            + (
                f" At it: turn-taking p50 {cell(at_capacity, 'turn_latency_p50')}, p95 "
                f"{cell(at_capacity, 'turn_latency_p95')}, barge-in p50 {cell(at_capacity, 'barge_in_p50')}, "
                f"{at_capacity['turns']} turns, client lag max {at_capacity['client_lag_max']:.3f} s."
                if capacity["users"] and "turns" in at_capacity
                else ""
            )
        )
        body += ["", found]
    text = "\n".join(body)
    print(text)
    if not a.no_write:
        write_result(result_name(a.section), a.section, "\n".join(table), f"{setup}\n\n{found}")


if __name__ == "__main__":
    main()
