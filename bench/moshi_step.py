"""Moshi family: where one engine step's time goes, against the model step alone, on the same batch.

    python bench/moshi_step.py [--batches 4,8] [--rounds 7] [--frames 15] [--write]

A small random checkpoint is written with ``duplex model init --family moshi`` (seed 0) in a temporary folder,
once with its window (``context``) at 500 frames, as ``bench/moshi_serving.py`` serves it, and once at the
published 3000. Per batch of N sessions (all rows active, speech-like 24 kHz input in 80 ms chunks) it times,
in ``--rounds`` rounds that take the settings in turn (so that load from elsewhere on the machine falls on
all of them alike), ``--frames`` steps of each setting:

- ``MoshiServed.step`` with the default kernels (``bench/moshi_cpu.py``'s figure), 1 torch thread, window 500;
- the same with batch-invariant kernels (``engine.batch_invariant``, on in ``duplex up``);
- ``StepExecutor.run`` with batch-invariant kernels: the engine's own step, PCM16 in and out, on a plan of N
  chunks — what the engine reports as its step (``ChunkTiming.compute_ms``, ``duplex_engine_step_seconds``);
- the default kernels with the window at 3000 frames;
- the default kernels with 2 torch threads (``duplex up --torch-threads 2``), last in each round.

Each figure is the median over rounds of each round's median step, with the lowest and highest round median;
"CPU" is the step thread's CPU time (``time.thread_time``; 1-thread settings only), which other processes on
the machine disturb far less than the wall clock. The batch-invariant model step is split into its parts:
Mimi encoding of the input, the LM (``LMGen.step``: temporal transformer and depformer), Mimi decoding of the
output, and the rest (floor control, masks, tensors), each as its median share of the step.
``--write`` puts the table into bench/results/moshi_family_engine_step.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moshi_cpu import speechlike
from report import write_result

from duplex.model.moshi.checkpoint import load_checkpoint
from duplex.model.moshi.served import MoshiServed, MoshiSlots
from duplex.model.moshi.tiny import init_checkpoint
from duplex.serving.engine.executor import StepExecutor
from duplex.serving.engine.planner import PlannedRow, SlotReset, StepPlan
from duplex.serving.engine.session import Conversation, InputChunk

TITLE = "Moshi family: the engine's step"
WARMUP = 5
PARTS = ("Mimi encode", "LM", "Mimi decode")


@dataclass
class Setting:
    label: str
    context: int
    threads: int
    invariant: bool
    engine: bool = False
    wall: list[float] = field(default_factory=list)
    """Each round's median step (ms)."""
    cpu: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    """Each round's median share of the step per part."""


class PartClock:
    """Wall time spent in the parts of ``MoshiServed.step`` during one step (wrappers on the instance)."""

    def __init__(self, served: MoshiServed) -> None:
        self.spent = dict.fromkeys(PARTS, 0.0)
        served._encode = self._timed("Mimi encode", served._encode)  # type: ignore[method-assign]
        served.gen.step = self._timed("LM", served.gen.step)
        served.mimi.decode = self._timed("Mimi decode", served.mimi.decode)

    def _timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - t0

        return timed

    @contextmanager
    def step(self) -> Iterator[dict[str, float]]:
        self.spent = dict.fromkeys(PARTS, 0.0)
        yield self.spent


def small_checkpoint(out: Path, context: int) -> Path:
    init_checkpoint("moshi", out, seed=0)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["context"] = context
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out


def pcm_chunks(audio: torch.Tensor) -> list[list[bytes]]:
    """(frames, batch, samples) floats → per frame, per row, PCM16 bytes."""
    pcm = (audio * 32767.0).round().to(torch.int16)
    return [[pcm[f, b].numpy().tobytes() for b in range(pcm.shape[1])] for f in range(pcm.shape[0])]


class Runner:
    """One setting's streaming state on a batch, stepped frame after frame."""

    def __init__(self, served: MoshiServed, setting: Setting, batch: int, frames: int) -> None:
        self.served, self.setting, self.batch = served, setting, batch
        fmt = served.format
        self.audio = speechlike(batch, frames, fmt.frame_samples, fmt.sample_rate)
        self.pcm = pcm_chunks(self.audio)
        self.frame = 0
        if setting.engine:
            self.executor = StepExecutor(served, batch, fmt.frame_samples, batch_invariant=setting.invariant)
            self.executor.apply([SlotReset(slot) for slot in range(batch)])
            self.convs = [
                Conversation(f"s{b}", fmt.frame_samples, fmt.frame_samples, 50, text=served.text_decoder())
                for b in range(batch)
            ]
        else:
            self.state: MoshiSlots = served.new_slots(batch)
            for slot in range(batch):
                self.state.reset(slot)

    def step(self) -> None:
        f = self.frame % len(self.pcm)
        if self.setting.engine:
            rows = tuple(
                PlannedRow(conv, InputChunk(self.frame, self.pcm[f][b], 0, 0.0, 0), self.frame, False)
                for b, conv in enumerate(self.convs)
            )
            self.executor.run(StepPlan(0, "regular", 0, rows, 0.0))
        else:
            self.served.step(
                self.state, self.audio[f], rows=slice(0, self.batch), batch_invariant=self.setting.invariant
            )
        self.frame += 1


def measure(
    batch: int, served: dict[int, MoshiServed], clocks: dict[int, PartClock], args: argparse.Namespace
) -> list[Setting]:
    settings = [
        Setting("model step, default kernels", 500, 1, False),
        Setting("model step, batch-invariant kernels", 500, 1, True),
        Setting("engine step (`StepExecutor.run`), batch-invariant kernels", 500, 1, True, engine=True),
        Setting("model step, default kernels, window 3000 frames", 3000, 1, False),
        Setting("model step, default kernels, 2 torch threads", 500, 2, False),
    ]
    frames = WARMUP + args.rounds * args.frames
    runners = [Runner(served[s.context], s, batch, frames) for s in settings]
    for runner in runners:
        torch.set_num_threads(runner.setting.threads)
        for _ in range(WARMUP):
            runner.step()
    for _ in range(args.rounds):
        for runner in runners:
            s = runner.setting
            torch.set_num_threads(s.threads)
            wall, cpu, shares = [], [], {p: [] for p in PARTS}
            for _ in range(args.frames):
                with clocks[s.context].step() as spent:
                    t0, c0 = time.perf_counter(), time.thread_time()
                    runner.step()
                    w, c = time.perf_counter() - t0, time.thread_time() - c0
                wall.append(w * 1e3)
                cpu.append(c * 1e3)
                for p in PARTS:
                    shares[p].append(spent[p] / w)
            s.wall.append(statistics.median(wall))
            s.cpu.append(statistics.median(cpu))
            for p in PARTS:
                s.parts.setdefault(p, []).append(statistics.median(shares[p]))
    return settings


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="4,8", help="comma-separated batch sizes (sessions per step)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds, each stepping every setting in turn")
    ap.add_argument("--frames", type=int, default=15, help="steps per setting per round")
    ap.add_argument("--write", action="store_true", help="update bench/results/ and docs/benchmarks.md")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        served: dict[int, MoshiServed] = {}
        for context in (500, 3000):
            directory = small_checkpoint(Path(tmp) / f"moshi-{context}", context)
            served[context] = MoshiServed(load_checkpoint(directory), temperature=0.0)
        clocks = {c: PartClock(s) for c, s in served.items()}
        for batch in [int(b) for b in args.batches.split(",")]:
            settings = measure(batch, served, clocks, args)
            torch.set_num_threads(1)  # the engine's default, as the result file records it
            base_wall, base_cpu = statistics.median(settings[0].wall), statistics.median(settings[0].cpu)
            for s in settings:
                parts = " / ".join(f"{100 * statistics.median(s.parts[p]):.0f}" for p in PARTS)
                rest = max(0.0, 100 - sum(100 * statistics.median(s.parts[p]) for p in PARTS))
                one = s.threads == 1
                cpu = spread(s.cpu) if one else "—"
                ratio = statistics.median(s.cpu) / base_cpu if one else statistics.median(s.wall) / base_wall
                row = f"| {batch} | {s.label} | {spread(s.wall)} | {cpu} | {ratio:.2f} | {parts} / {rest:.0f} |"
                rows.append(row)
                print(row, flush=True)
    table = "\n".join(
        [
            "| sessions | what is timed | step p50 ms (round range) | CPU ms | "
            "× default model step (CPU; 2 threads: wall) | encode / LM / decode / rest % |",
            "|---:|---|---:|---:|---:|---:|",
            *rows,
        ]
    )
    text = (
        "Steps of a small random Moshi-layout checkpoint (`duplex model init --family moshi`, seed 0; window 500 "
        "frames unless said), greedy, float32, every row active, 1 torch thread unless said (the engine's default); "
        f"{args.rounds} rounds of {args.frames} steps per setting, the settings in turn within each round. "
        "Step p50: the median of the rounds' median steps, with the lowest and highest round median; CPU: the "
        "step thread's CPU time, and the ratio to the default model step is of CPU times (of wall times for 2 "
        "threads); parts: shares of the step's wall time."
    )
    if args.write:
        write_result("moshi_family_engine_step", TITLE, table, text)


if __name__ == "__main__":
    main()
