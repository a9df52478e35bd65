"""Moshi family on this CPU: step time of a small checkpoint against batch size (a model-step microbenchmark).

    python bench/moshi_cpu.py [--checkpoint DIR] [--batches 1,2,4,8,16,32] [--frames 40] [--threads 0] [--write]

Without ``--checkpoint`` a small random one is written with ``duplex model init --family moshi`` (seed 0) in
a temporary folder. Each batch of sessions is stepped through ``MoshiServed`` — the engine's own path: Mimi
encode, ``LMGen.step`` under the execution mask, Mimi decode — on speech-like input (harmonic tones with a
moving pitch and pauses) for ``--frames`` frames after 10 warm-up frames. One frame is 80 ms of audio, so a
batch's step fits the frame while its step p99 stays under 80 ms; "fits" names the largest such batch. This is
the model step alone over a few seconds: not a serving capacity, which counts only from conversations longer
than the attention window through the engine, measured from capture time (``bench/serving.py``).
``--write`` puts the table into bench/results/moshi_cpu.json and docs/benchmarks.md ("Moshi family on CPU").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from report import write_result

from duplex.model.moshi.checkpoint import load_checkpoint
from duplex.model.moshi.served import MoshiServed
from duplex.model.moshi.tiny import init_checkpoint

WARMUP = 10
PERIOD_MS = 80.0


def speechlike(batch: int, frames: int, frame_samples: int, sample_rate: int) -> torch.Tensor:
    """(frames, batch, frame_samples): a different voiced contour per session, with pauses."""
    t = torch.arange(frames * frame_samples) / sample_rate
    rows = []
    for b in range(batch):
        f0 = 110.0 + 15.0 * b % 120 + 30.0 * torch.sin(2 * torch.pi * (0.3 + 0.05 * b) * t)
        phase = 2 * torch.pi * torch.cumsum(f0 / sample_rate, dim=0)
        voice = sum(torch.sin(k * phase) / k for k in range(1, 6))
        gate = (torch.sin(2 * torch.pi * (0.4 + 0.03 * b) * t) > -0.3).float()
        rows.append(0.2 * voice * gate)
    audio = torch.stack(rows).view(batch, frames, frame_samples)
    return audio.permute(1, 0, 2).contiguous()


def time_batch(served: MoshiServed, batch: int, frames: int) -> list[float]:
    fmt = served.format
    state = served.new_slots(batch)
    for slot in range(batch):
        state.reset(slot)
    audio = speechlike(batch, WARMUP + frames, fmt.frame_samples, fmt.sample_rate)
    times = []
    for i in range(WARMUP + frames):
        t0 = time.perf_counter()
        served.step(state, audio[i], rows=slice(0, batch))
        if i >= WARMUP:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or init_checkpoint("moshi", Path(tmp) / "moshi-small", seed=0)
        ckpt = load_checkpoint(path)
        served = MoshiServed(ckpt, temperature=0.0)
        params = sum(p.numel() for p in ckpt.lm.parameters())
        rows, realtime = [], 0
        for batch in [int(b) for b in args.batches.split(",")]:
            times = sorted(time_batch(served, batch, args.frames))
            p50 = statistics.median(times)
            p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
            ok = p99 <= PERIOD_MS
            realtime = batch if ok else realtime
            rows.append(f"| {batch} | {p50:.1f} | {p99:.1f} | {p50 / batch:.2f} | {'yes' if ok else 'no'} |")
            print(rows[-1], flush=True)
    table = "\n".join(
        ["| batch | step p50 (ms) | step p99 (ms) | ms per row | step ≤ 80 ms |", "|---|---|---|---|---|", *rows]
    )
    print(f"largest batch whose step p99 ≤ {PERIOD_MS:.0f} ms: {realtime}")
    if args.write:
        write_result(
            "moshi_cpu",
            "Moshi family on CPU",
            table,
            f"Step of a small random Moshi-layout checkpoint ({params / 1e6:.1f} M LM parameters, float32, greedy) "
            f"per 80 ms frame, {args.frames} frames after {WARMUP} warm-up.\n\n"
            f"Largest batch whose step p99 fits the 80 ms frame: **{realtime}** (the model step alone, short runs: "
            "not a serving capacity).",
        )


if __name__ == "__main__":
    main()
