"""Moshi family served: real-time sessions per replica on this CPU, from conversations longer than the window.

    python bench/moshi_serving.py [--checkpoint DIR] [--context 500] [--sessions 8,16,32,48,64] [--seconds 75]
                          [--steady-after 45] [--cohorts 1] [--client-processes 2] [--write]
                          [--up-args=--torch-threads=2]

Without ``--checkpoint`` a small random checkpoint is written with ``duplex model init --family moshi`` (seed 0)
in a temporary folder, its ``context`` (the attention window, in 80 ms frames) set to ``--context`` so that the
conversations outlast it (upstream's 3000 frames would need conversations over 4 minutes). Each load level
N is N real-time conversations of ``--seconds`` of 24 kHz speech-like audio in 80 ms chunks through a fresh
``duplex up --checkpoint DIR --temperature 0 --max-sessions N`` (Envoy in front; a step computes its whole
slot block, so a level runs on exactly its slots), clients steered by the phase hint, from
``--client-processes`` processes; figures count only chunks captured ``--steady-after`` seconds or more into
their conversation (every window full, every session joined). Definitions as ``bench/serving.py``: a level is
real-time when every chunk came back, none was substituted, and the round trip p99 ≤ chunk / 2 (40 ms).
``--write`` puts the table into bench/results/moshi_family_serving_capacity.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from duplex.model.moshi.tiny import init_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command, write_result

from serving import run_level, start_up, table

CHUNK_MS = 80
RATE = 24000
TITLE = "Moshi family: serving capacity"


def small_checkpoint(out: Path, context: int) -> Path:
    """The small random Moshi checkpoint (seed 0) with its attention window set to ``context`` frames."""
    init_checkpoint("moshi", out, seed=0)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["context"] = context
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="a Moshi-family checkpoint folder (default: a small random one)")
    ap.add_argument("--context", type=int, default=500, help="window (frames) of the written checkpoint")
    ap.add_argument("--sessions", default="8,16,32,48,64", help="comma-separated load levels")
    ap.add_argument("--seconds", type=float, default=75.0, help="audio per conversation")
    ap.add_argument("--steady-after", type=float, default=45.0, help="count chunks captured this far in or later")
    ap.add_argument("--spawn-rate", type=float, default=16.0, help="sessions joining per second")
    ap.add_argument("--cohorts", type=int, default=1, help="phase cohorts (duplex up --cohorts)")
    ap.add_argument("--client-processes", type=int, default=2, help="client processes holding the sessions")
    ap.add_argument("--up-args", default="", help="more `duplex up` flags, e.g. --torch-threads 2")
    ap.add_argument("--write", action="store_true", help="update bench/results/ and docs/benchmarks.md")
    args = ap.parse_args()
    levels_n = [int(x) for x in args.sessions.split(",")]
    window_s = args.context * CHUNK_MS / 1000
    if args.checkpoint is None and args.steady_after < window_s:
        ap.error(f"--steady-after {args.steady_after:g} s: below the {window_s:g} s window of --context {args.context}")
    if args.seconds <= args.steady_after:
        ap.error("--seconds must exceed --steady-after (nothing would be counted)")
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.checkpoint or small_checkpoint(Path(tmp) / "moshi-small", args.context)
        extra = ["--checkpoint", str(directory), "--temperature", "0", "--chunk-ms", str(CHUNK_MS), "--no-agent"]
        extra += args.up_args.split()
        levels = []
        for n in levels_n:  # each level on an engine with exactly N slots: a step computes its whole slot block
            up = start_up(n, args.cohorts, extra)
            try:
                lv = run_level(
                    up.address,
                    n,
                    args.seconds,
                    "steered",
                    args.spawn_rate,
                    args.steady_after,
                    args.client_processes,
                    chunk_ms=CHUNK_MS,
                    rate=RATE,
                )
            finally:
                up.stop()
            lv.cohorts, lv.phases = args.cohorts, "steered"
            levels.append(lv)
            print(
                f"N={n}: realtime={lv.realtime} rtt p50/p99 {lv.rtt_p50:.1f}/{lv.rtt_p99:.1f} ms, "
                f"step p50/p99 {lv.step_p50:.1f}/{lv.step_p99:.1f} ms ({lv.batch_p50:.0f} rows), "
                f"missing {lv.missing}, substituted {lv.substituted}",
                flush=True,
            )
    best = 0
    for lv in levels:
        if not lv.realtime:
            break
        best = lv.n
    print(f"largest real-time N: {best}")
    what = (
        f"the checkpoint at `{args.checkpoint}`"
        if args.checkpoint
        else f"a small random Moshi-layout checkpoint (`duplex model init --family moshi`, seed 0, window "
        f"{args.context} frames = {window_s:g} s)"
    )
    text = (
        f"`duplex up` serving {what}, greedy, float32, {args.cohorts} cohort(s), and the clients "
        f"({args.client_processes} processes) on one machine. {args.seconds:g} s of 24 kHz speech-like audio per "
        f"conversation in {CHUNK_MS} ms chunks, sessions joining at {args.spawn_rate:g}/s and following the phase "
        f"hint; figures from chunks captured {args.steady_after:g} s or more into their conversation (every window "
        "full). Columns as in Serving (`bench/serving.py`).\n\n"
        f"Largest real-time N, it and every smaller level (every chunk back, none substituted, round trip p99 ≤ "
        f"{CHUNK_MS // 2} ms): **{best}**."
    )
    if args.write:
        write_result("moshi_family_serving_capacity", TITLE, table(levels), text, cmd=command())


if __name__ == "__main__":
    main()
