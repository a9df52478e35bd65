"""Soak benchmark: N real-time conversations coming and going against a fresh ``duplex up`` for M minutes.

    python bench/soak.py                                  # 16 sessions, 10 minutes, 10 s baseline first
    python bench/soak.py --minutes 2 --no-write           # a short check

First a baseline: N conversations of ``--baseline-seconds`` at once (``bench/serving.py``'s ``run_level``,
steered phases). Then the soak on the same server: N client slots, each holding one conversation after
another until ``--minutes`` are up — each a random 30–120 s of speech-like audio (cut to the time left),
following the phase hint like ``duplex talk`` (a start refused as full is retried after the server's
``retry-after-ms``, as a client would); ``--vanish`` of them are cancelled mid-conversation (the
client disappears: its call is cancelled, no EndOfStream). The user keeps talking over the model, so
``USER_BARGE_IN`` events happen; their count is reported. Every ``--sample-s`` the server is sampled: RSS,
open fds and threads of the engine process (``duplex up``) and of its gateway child (psutil), and from the
engine's /metrics ``duplex_engine_asyncio_tasks``, ``duplex_engine_slots_occupied`` and the process
collector's RSS. Reported: RSS growth (mean over the last 2 minutes vs minutes 1–2; for runs under 4
minutes the last half vs the second quarter), fd / thread / task / slot counts at the start (after the
baseline) and at the end (after the last session ended: slots must be 0), and the chunk round trip p50 / p99
over every answered chunk of the conversations that ran to their end (a vanished client's are lost with its
call) vs the baseline (target: p99 ratio ≤ 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import socket
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil

from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command, machine, write_section

from serving import CHUNK_MS, run_level, speechlike, start_up


@dataclass
class Sample:
    t_s: float
    engine_rss_mb: float
    engine_fds: int
    engine_threads: int
    gateway_rss_mb: float
    gateway_fds: int
    gateway_threads: int
    tasks: int
    slots: int


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    conversations: int = 0
    vanished: int = 0
    failed: list[str] = field(default_factory=list)
    substituted: int = 0
    barge_ins: int = 0
    refused: int = 0
    """Starts refused as full (RESOURCE_EXHAUSTED) and retried after the server's retry-after-ms."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+) (\S+)$", text, re.M)}


def gateway_process(up: psutil.Process, target: str) -> psutil.Process | None:
    """The child of ``duplex up`` listening on the gateway's port (its other children: the agent, Redis and
    multiprocessing's resource tracker)."""
    port = int(target.rsplit(":", 1)[1])
    for child in up.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in child.connections("tcp")):
                return child
    return None


def sample(engine: psutil.Process, g: psutil.Process | None, metrics_port: int, t0: float) -> Sample:
    m = scrape(metrics_port)
    return Sample(
        t_s=time.monotonic() - t0,
        engine_rss_mb=engine.memory_info().rss / 2**20,
        engine_fds=engine.num_fds(),
        engine_threads=engine.num_threads(),
        gateway_rss_mb=g.memory_info().rss / 2**20 if g else 0.0,
        gateway_fds=g.num_fds() if g else 0,
        gateway_threads=g.num_threads() if g else 0,
        tasks=int(m.get("duplex_engine_asyncio_tasks", -1)),
        slots=int(m.get("duplex_engine_slots_occupied", -1)),
    )


def record(soak: Soak, conv: client.Conversation) -> None:
    soak.conversations += 1
    if conv.code != grpc.StatusCode.OK:
        soak.failed.append(f"{conv.code.name}: {conv.details}")
    for r in conv.received:
        ev = r.event
        if ev.HasField("turn") and ev.turn.type == pb.USER_BARGE_IN:
            soak.barge_ins += 1
        if ev.HasField("audio"):
            if ev.audio.timing.substituted:
                soak.substituted += 1
            elif ev.audio.seq in conv.sent_us:
                soak.rtt_ms.append((r.t_us - conv.sent_us[ev.audio.seq]) / 1e3)


async def client_slot(ch: grpc.aio.Channel, i: int, end: float, vanish: float, soak: Soak) -> None:
    """One client after another in this slot until ``end`` (monotonic)."""
    rng = random.Random(i)
    await asyncio.sleep(rng.uniform(0, 2.0))  # independent clients do not start in the same instant
    k = 0
    while (left := end - time.monotonic()) > 5.0:
        seconds = min(rng.uniform(30.0, 120.0), left)
        chunks = client.split_chunks(speechlike(seconds, 1000 * i + k), 16000 * CHUNK_MS // 1000)
        call = asyncio.create_task(client.converse(ch, chunks, chunk_ms=CHUNK_MS))
        k += 1
        if rng.random() < vanish:
            done, _ = await asyncio.wait({call}, timeout=rng.uniform(3.0, seconds - 1.0))
            if not done:  # the client disappears mid-conversation: its call is cancelled
                call.cancel()
                soak.conversations += 1
                soak.vanished += 1
                continue
        conv = await call
        if conv.code == grpc.StatusCode.RESOURCE_EXHAUSTED and conv.ready is None:
            # a start refused as full: the slot just freed is not yet counted free everywhere (the router
            # learns other sessions' ends from its next load poll); a client retries after the hint
            soak.refused += 1
            retry_ms = dict(conv.trailing).get("retry-after-ms", "1000")
            await asyncio.sleep(int(retry_ms) / 1000)
            continue
        record(soak, conv)


async def run_soak(
    target: str, n: int, minutes: float, vanish: float, every_s: float, up: psutil.Process, metrics_port: int
) -> Soak:
    soak = Soak()
    gateway = gateway_process(up, target)
    t0 = time.monotonic()
    soak.samples.append(await asyncio.to_thread(sample, up, gateway, metrics_port, t0))
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                soak.samples.append(await asyncio.to_thread(sample, up, gateway, metrics_port, t0))

    watch = asyncio.create_task(sampler())
    async with grpc.aio.insecure_channel(target) as ch:
        await asyncio.gather(*(client_slot(ch, i, t0 + minutes * 60, vanish, soak) for i in range(n)))
    stop.set()
    await watch
    deadline = time.monotonic() + 30
    while True:  # the server frees the last slots once it has seen the last streams end
        last = await asyncio.to_thread(sample, up, gateway, metrics_port, t0)
        if last.slots == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    soak.samples.append(last)
    return soak


def rss_growth(samples: list[Sample]) -> tuple[float, str]:
    """RSS growth % of the engine: mean over the last 2 minutes vs minutes 1–2 (short runs: last half vs the
    second quarter), and which windows were compared."""
    total = samples[-1].t_s
    if total >= 240:
        early, late, what = (60.0, 120.0), (total - 120.0, total), "last 2 min vs min 1–2"
    else:
        early, late, what = (total / 4, total / 2), (total / 2, total), "last half vs second quarter"

    def mean(win: tuple[float, float]) -> float:
        xs = [s.engine_rss_mb for s in samples if win[0] <= s.t_s <= win[1]]
        return statistics.mean(xs) if xs else float("nan")

    return 100.0 * (mean(late) / mean(early) - 1.0), what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=16, help="concurrent conversations (the measured capacity)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--baseline-seconds", type=float, default=10.0)
    ap.add_argument("--vanish", type=float, default=0.15, help="share of conversations cancelled mid-way")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between server samples")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    metrics_port = free_port()
    proc, target = start_up(args.sessions, 4, ["--metrics-port", str(metrics_port)])
    try:
        up = psutil.Process(proc.pid)
        base = asyncio.run(run_level(target, args.sessions, args.baseline_seconds, "steered", 32.0))
        print(f"baseline {args.baseline_seconds:g} s: rtt p50/p99 {base.rtt_p50:.1f}/{base.rtt_p99:.1f} ms", flush=True)
        soak = asyncio.run(run_soak(target, args.sessions, args.minutes, args.vanish, args.sample_s, up, metrics_port))
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
    first, last = soak.samples[0], soak.samples[-1]
    growth, windows = rss_growth(soak.samples)
    p50, p99 = (float(np.percentile(soak.rtt_ms, q)) for q in (50, 99))
    ratio = p99 / base.rtt_p99
    row = "| {} | {} | {} |\n"
    text = (
        f"Command: `{command()}` — a fresh `duplex up` (tiny preset, {args.sessions} slots, 4 cohorts) and the "
        f"clients on one machine: {machine()}. Definitions in `bench/soak.py`: {args.sessions} client slots, "
        "each holding 30–120 s conversations one after another (steered phases), "
        f"{args.vanish:.0%} of them cancelled mid-way; baseline = {args.sessions} conversations of "
        f"{args.baseline_seconds:g} s on the same server first.\n\n"
        f"{soak.conversations} conversations ({soak.vanished} vanished mid-way, {len(soak.failed)} ended with an "
        f"error{': ' + '; '.join(sorted(set(soak.failed))[:3]) if soak.failed else ''}), {len(soak.rtt_ms)} "
        f"chunks answered, {soak.substituted} substituted, {soak.barge_ins} USER_BARGE_IN events; "
        f"{soak.refused} starts refused as full and retried after the server's retry-after-ms.\n\n"
        "| figure | start (after the baseline) | end (after the last session) |\n|:---|---:|---:|\n"
        + row.format("engine RSS MiB", f"{first.engine_rss_mb:.0f}", f"{last.engine_rss_mb:.0f}")
        + row.format("engine open fds", first.engine_fds, last.engine_fds)
        + row.format("engine threads", first.engine_threads, last.engine_threads)
        + row.format("engine asyncio tasks", first.tasks, last.tasks)
        + row.format("slots occupied", first.slots, last.slots)
        + row.format("gateway RSS MiB", f"{first.gateway_rss_mb:.0f}", f"{last.gateway_rss_mb:.0f}")
        + row.format("gateway open fds", first.gateway_fds, last.gateway_fds)
        + row.format("gateway threads", first.gateway_threads, last.gateway_threads)
        + "\n| figure | result | target |\n|:---|---:|:---|\n"
        + f"| engine RSS growth ({windows}) | {growth:+.1f} % | < 5 % |\n"
        + f"| chunk round trip p50 / p99, whole soak | {p50:.1f} / {p99:.1f} ms | |\n"
        + f"| chunk round trip p50 / p99, {args.baseline_seconds:g} s baseline | {base.rtt_p50:.1f} / "
        f"{base.rtt_p99:.1f} ms | |\n" + f"| soak p99 / baseline p99 | {ratio:.2f}× | ≤ 1.5× |\n"
    )
    print(text, flush=True)
    if not args.no_write:
        write_section("Soak", text)


if __name__ == "__main__":
    main()
