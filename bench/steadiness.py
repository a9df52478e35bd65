"""Is this machine steady enough to measure tails on? The same small piece of torch work, timed over and over
by one process pinned to each core, with nothing else running.

    python bench/steadiness.py                  # 90 s; writes bench/results/machine_steadiness.json
    python bench/steadiness.py --seconds 30 --no-write

On a machine of one's own every second of this looks like every other. On a shared VM some seconds run
slower while a neighbour uses the same physical core or its caches — the guest sees no steal time and no
process of its own doing it, yet every thread on that core runs slower for those seconds, and every p99
measured meanwhile (a model step, a relay hop) carries it. Per core this prints the work's median and p99
time, the *slow seconds* (1-s windows whose mean is ≥ ``--slow`` × the run's median), the longest run of
them, and the steal the kernel reported for the core (``/proc/stat``). Run it before a benchmark whose p99
is to be compared with another run's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command, machine, write_result

USER_HZ = os.sysconf("SC_CLK_TCK")


def steal_ticks() -> dict[int, int]:
    """Steal time the kernel reports per CPU so far (USER_HZ ticks)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            out[int(name[3:])] = int(fields[7])
    return out


def probe(core: int, seconds: float) -> list[tuple[float, float]]:
    """(start, duration) of each repetition of the work, on ``core`` only (child process)."""
    import torch

    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    reps: list[tuple[float, float]] = []
    end = time.monotonic() + seconds
    while (t0 := time.monotonic()) < end:
        for _ in range(40):
            a @ a
        reps.append((t0, time.monotonic() - t0))
    return reps


@dataclass
class Core:
    core: int
    median_ms: float
    p99_ms: float
    seconds: int
    slow: list[int]
    """Which 1-s windows (from the start) were slow."""
    steal_s: float

    @property
    def longest(self) -> int:
        best = run = 0
        for i in range(self.seconds):
            run = run + 1 if i in self.slow else 0
            best = max(best, run)
        return best


def summarize(core: int, reps: list[tuple[float, float]], slow_ratio: float, steal_s: float) -> Core:
    start = reps[0][0]
    dur = np.array([d for _, d in reps]) * 1000
    median = float(np.median(dur))
    windows: dict[int, list[float]] = {}
    for (t, _), d in zip(reps, dur, strict=True):
        windows.setdefault(int(t - start), []).append(float(d))
    whole = sorted(windows)[:-1]  # the last window is cut short
    slow = [w for w in whole if np.mean(windows[w]) >= slow_ratio * median]
    return Core(core, median, float(np.percentile(dur, 99)), len(whole), slow, steal_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--slow", type=float, default=1.25, help="a second is slow when its mean is this × the median")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    before = steal_ticks()
    with ProcessPoolExecutor(len(cores), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(probe, c, args.seconds) for c in cores]
        runs = [f.result() for f in futures]
    after = steal_ticks()
    results = [
        summarize(c, reps, args.slow, (after.get(c, 0) - before.get(c, 0)) / USER_HZ)
        for c, reps in zip(cores, runs, strict=True)
    ]
    head = (
        "| core | work median / p99 ms | slow seconds | longest run of slow seconds | steal reported |\n"
        "|---:|---:|---:|---:|---:|\n"
    )
    rows = "".join(
        f"| {r.core} | {r.median_ms:.1f} / {r.p99_ms:.1f} | {len(r.slow)} of {r.seconds} | {r.longest} s | "
        f"{r.steal_s:.2f} s |\n"
        for r in results
    )
    slow_at = "; ".join(f"core {r.core}: {', '.join(map(str, r.slow)) or 'none'}" for r in results)
    setup = (
        "One process pinned to each core repeats the same work (40 products of two 256 × 256 matrices, one torch "
        f"thread); a second is *slow* when its mean is ≥ {args.slow:g} × the core's median. Definitions in "
        "`bench/steadiness.py`."
    )
    body = (
        f"Command: `{command()}` — {machine()}. {setup}\n\n"
        + head
        + rows
        + f"\nSlow seconds (from the start): {slow_at}.\n"
    )
    print(body)
    if not args.no_write:
        write_result(
            "machine_steadiness",
            "Machine steadiness",
            head + rows,
            f"{setup}\n\nSlow seconds (from the start): {slow_at}.",
        )


if __name__ == "__main__":
    main()
