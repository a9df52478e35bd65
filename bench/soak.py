"""Soak benchmark: N real-time conversations coming and going against a fresh ``duplex up`` for M minutes.

    python bench/soak.py                                  # 48 sessions, 10 minutes, 10 s baseline first
    python bench/soak.py --minutes 2 --no-write           # a short check
    python bench/soak.py --minutes 2 --no-resume --no-write   # the same, vanished sessions freed at once

Both runs use one load generator (``run_soak``), so the ratio compares like with like: N client slots,
each holding one conversation after another until the run's time is up — each a random 30–120 s of
speech-like audio (cut to the time left), following the phase hint like ``duplex talk``; ``--vanish`` of them
are cancelled mid-conversation (the client disappears: its call is cancelled, no EndOfStream). First the
baseline: ``--baseline-seconds`` of that (every conversation is cut to the window, the same vanish share),
then the soak for ``--minutes`` on the same server.

The load counts parked sessions: a vanished client's session keeps its slot for the engine's resume grace
(``SessionReady.resume_grace_ms``; 0 with ``--no-resume``, whose clients ask for no resume token), so that
client slot starts its next conversation only once the grace is over (plus ``ARRIVAL_MARGIN_S`` for the
session picker's next load poll): live + parked sessions stay within the N slots. A start refused as full anyway is
retried after the server's ``retry-after-ms`` and counted. The user keeps talking over the model, so
``USER_BARGE_IN`` events happen; their count is reported.

Every ``--sample-s`` the server is sampled: RSS, open fds and threads of the engine process (the process of
``duplex up`` serving the engine's /metrics) and of its Envoy child (psutil), and from the engine's /metrics
``duplex_engine_asyncio_tasks``,
``duplex_engine_slots_occupied``, ``duplex_engine_parked_sessions`` and the step counts by kind. Reported:
RSS growth (mean over the last 2 minutes vs minutes 1–2; for runs under 4 minutes the last half vs the second
quarter), fd / thread / task / slot counts at the start (after the baseline) and at the end (after the last
session ended: slots must be 0), parked slots seen, and per run the chunk round trip p50 / p99 over every
answered chunk of the conversations that ran to their end (a vanished client's are lost with its call), split
into the engine's part (chunk received → result queued: queue wait + step) and the rest (transit through
Envoy both ways and the client), the share of late chunks and the client event loop's lag (a load
generator that stalls delays what it measures). Target: soak p99 / baseline p99 ≤ 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
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
from duplex.serving.ports import free_port_pair
from duplex.v1 import duplex_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command, machine, write_result

from serving import CHUNK_MS, speechlike, start_up

ARRIVAL_MARGIN_S = 1.0
"""After a parked session's grace, wait this much longer before the slot's next start: the engine's sweep
(every 0.1 s) frees the slot and the session picker learns it at its next load poll (every 0.25 s)."""
LAG_TICK_S = 0.05
"""Period of the client event-loop lag probe."""
STEP_KINDS = ("regular", "catchup", "split")


@dataclass
class Sample:
    t_s: float
    engine_rss_mb: float
    engine_fds: int
    engine_threads: int
    envoy_rss_mb: float
    envoy_fds: int
    envoy_threads: int
    tasks: int
    slots: int
    parked: int
    steps: dict[str, int]


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    """Chunk round trip (chunk k captured, i.e. due to be sent → client received its output)."""
    engine_ms: list[float] = field(default_factory=list)
    """The engine's part of each round trip: chunk received → its result queued for sending."""
    wait_ms: list[float] = field(default_factory=list)
    """Queue wait of each chunk: received → the step that consumed it started."""
    late: int = 0
    """Answered chunks that missed their cohort's regular step (stepped in a catch-up step)."""
    lag_ms: list[float] = field(default_factory=list)
    """Client event loop lag: how late each ``LAG_TICK_S`` timer fired."""
    conversations: int = 0
    vanished: int = 0
    failed: list[str] = field(default_factory=list)
    substituted: int = 0
    barge_ins: int = 0
    refused: int = 0
    """Starts refused as full (RESOURCE_EXHAUSTED) and retried after the server's retry-after-ms."""
    parked_wait_s: float = 0.0
    """Client-slot seconds spent waiting for a vanished session's grace before the next start."""

    def p(self, xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) if xs else float("nan")

    def steps(self) -> dict[str, int]:
        """Model steps by kind between the first and the last sample."""
        a, b = self.samples[0].steps, self.samples[-1].steps
        return {k: b.get(k, 0) - a.get(k, 0) for k in STEP_KINDS}


def scrape(port: int) -> dict[str, float]:
    """The engine's /metrics: ``name`` or ``name{labels}`` → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def listener(up: psutil.Process, port: int) -> psutil.Process | None:
    """The process of ``duplex up`` (itself or a child) listening on ``port``: the engine on its /metrics port,
    Envoy on the front door's (the other children: the session picker, the agent, Redis and multiprocessing's
    resource tracker)."""
    for proc in [up, *up.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in proc.connections("tcp")):
                return proc
    return None


def sample(engine: psutil.Process, g: psutil.Process | None, metrics_port: int, t0: float) -> Sample:
    m = scrape(metrics_port)
    return Sample(
        t_s=time.monotonic() - t0,
        engine_rss_mb=engine.memory_info().rss / 2**20,
        engine_fds=engine.num_fds(),
        engine_threads=engine.num_threads(),
        envoy_rss_mb=g.memory_info().rss / 2**20 if g else 0.0,
        envoy_fds=g.num_fds() if g else 0,
        envoy_threads=g.num_threads() if g else 0,
        tasks=int(m.get("duplex_engine_asyncio_tasks", -1)),
        slots=int(m.get("duplex_engine_slots_occupied", -1)),
        parked=int(m.get("duplex_engine_parked_sessions", -1)),
        steps={k: int(m.get(f'duplex_engine_steps_total{{kind="{k}"}}', 0)) for k in STEP_KINDS},
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
            t = ev.audio.timing
            if t.substituted:
                soak.substituted += 1
            elif ev.audio.seq in conv.sent_us:
                captured_us = conv.capture_end_us(ev.audio.seq)  # a late send counts its lag
                soak.rtt_ms.append((r.t_us - captured_us) / 1e3)
                soak.engine_ms.append((t.server_send_us - t.server_recv_us) / 1e3)
                soak.wait_ms.append(t.queue_wait_ms)
                soak.late += t.late


async def client_slot(
    ch: grpc.aio.Channel, i: int, end: float, vanish: float, resume: bool, soak: Soak, seed: int
) -> None:
    """One client after another in this slot until ``end`` (monotonic)."""
    rng = random.Random(seed * 1000 + i)
    await asyncio.sleep(rng.uniform(0, 2.0))  # independent clients do not start in the same instant
    k = 0
    while (left := end - time.monotonic()) > 5.0:
        seconds = min(rng.uniform(30.0, 120.0), left)
        # made off the event loop: a 2-minute clip takes tens of ms of numpy, which would stall every other
        # client's sends and receives (and show up in their round trips)
        audio = await asyncio.to_thread(speechlike, seconds, 1000 * i + k + 100_000 * seed)
        chunks = client.split_chunks(audio, 16000 * CHUNK_MS // 1000)
        grace_s = [0.0]

        def on_event(ev: pb.ServerEvent, grace_s: list[float] = grace_s) -> None:
            if ev.HasField("ready") and not ev.ready.resumed:
                grace_s[0] = ev.ready.resume_grace_ms / 1000

        start = client.start_event(chunk_ms=CHUNK_MS, no_resume=not resume)
        call = asyncio.create_task(client.converse(ch, chunks, chunk_ms=CHUNK_MS, start=start, on_event=on_event))
        k += 1
        if rng.random() < vanish:
            done, _ = await asyncio.wait({call}, timeout=rng.uniform(3.0, seconds - 1.0))
            if not done:  # the client disappears mid-conversation: its call is cancelled
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
                soak.conversations += 1
                soak.vanished += 1
                # its session stays parked for the grace, holding its slot: this client slot's next user
                # arrives only once that slot is free again (live + parked stay within the N slots)
                hold = grace_s[0] + ARRIVAL_MARGIN_S if grace_s[0] else 0.0
                hold = min(hold, max(0.0, end - time.monotonic()))
                soak.parked_wait_s += hold
                await asyncio.sleep(hold)
                continue
        conv = await call
        if conv.code == grpc.StatusCode.RESOURCE_EXHAUSTED and conv.ready is None:
            # a start refused as full: a slot freed a moment ago is not yet counted free everywhere (the
            # router learns other sessions' ends from its next load poll); a client retries after the hint
            soak.refused += 1
            retry_ms = dict(conv.trailing).get("retry-after-ms", "1000")
            await asyncio.sleep(int(retry_ms) / 1000)
            continue
        record(soak, conv)


async def lag_probe(stop: asyncio.Event, out: list[float]) -> None:
    """How late a ``LAG_TICK_S`` timer fires on the clients' event loop."""
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(LAG_TICK_S)
        out.append(max(0.0, time.monotonic() - t - LAG_TICK_S) * 1e3)


async def run_soak(
    target: str,
    n: int,
    seconds: float,
    vanish: float,
    resume: bool,
    every_s: float,
    up: psutil.Process,
    metrics_port: int,
    seed: int,
) -> Soak:
    """``n`` client slots for ``seconds`` (the baseline and the soak alike), then wait until the server holds
    no slot (parked sessions included)."""
    soak = Soak()
    envoy = listener(up, int(target.rsplit(":", 1)[1]))
    engine = listener(up, metrics_port)
    if engine is None:
        raise RuntimeError(
            f"no process of duplex up (pid {up.pid}) listens on the engine's /metrics port {metrics_port}"
        )
    t0 = time.monotonic()
    soak.samples.append(await asyncio.to_thread(sample, engine, envoy, metrics_port, t0))
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                soak.samples.append(await asyncio.to_thread(sample, engine, envoy, metrics_port, t0))

    watch = asyncio.create_task(sampler())
    lag = asyncio.create_task(lag_probe(stop, soak.lag_ms))
    async with grpc.aio.insecure_channel(target) as ch:
        await asyncio.gather(*(client_slot(ch, i, t0 + seconds, vanish, resume, soak, seed) for i in range(n)))
    stop.set()
    await watch
    await lag
    deadline = time.monotonic() + 30
    while True:  # the server frees the last slots once it has seen the last streams end (and graces expire)
        last = await asyncio.to_thread(sample, engine, envoy, metrics_port, t0)
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


def run_row(name: str, s: Soak) -> str:
    """One row of the per-run comparison table."""
    steps = s.steps()
    total = sum(steps.values()) or 1
    kinds = " / ".join(f"{100 * steps[k] / total:.0f}" for k in STEP_KINDS)
    rest = [r - e for r, e in zip(s.rtt_ms, s.engine_ms, strict=True)]
    parked = [x.parked for x in s.samples if x.parked >= 0]
    return (
        f"| {name} | {s.conversations} ({s.vanished}) | {len(s.rtt_ms)} | "
        f"{s.p(s.rtt_ms, 50):.1f} / {s.p(s.rtt_ms, 99):.1f} | "
        f"{s.p(s.engine_ms, 50):.1f} / {s.p(s.engine_ms, 99):.1f} | "
        f"{s.p(s.wait_ms, 99):.1f} | {s.p(rest, 50):.1f} / {s.p(rest, 99):.1f} | "
        f"{100 * s.late / max(1, len(s.rtt_ms)):.2f} % | {kinds} | {max(parked, default=0)} | {s.refused} | "
        f"{s.p(s.lag_ms, 99):.1f} |\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=48, help="concurrent conversations (the measured capacity)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--baseline-seconds", type=float, default=10.0)
    ap.add_argument("--vanish", type=float, default=0.15, help="share of conversations cancelled mid-way")
    ap.add_argument(
        "--no-resume",
        action="store_true",
        help="clients ask for no resume token: a vanished session is freed at once (as engine.resume_grace_s 0)",
    )
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between server samples")
    ap.add_argument("--up-args", default="", help="more `duplex up` flags, e.g. --no-batch-invariant")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/results/ and docs/benchmarks.md")
    args = ap.parse_args()
    metrics_port = free_port_pair()  # the engine's /metrics; the session picker's on metrics_port + 1
    resume = not args.no_resume
    local = start_up(args.sessions, 4, ["--metrics-port", str(metrics_port), *args.up_args.split()])
    target = local.address
    try:
        up = psutil.Process(local.pid)

        def run(seconds: float, seed: int) -> Soak:
            return asyncio.run(
                run_soak(target, args.sessions, seconds, args.vanish, resume, args.sample_s, up, metrics_port, seed)
            )

        base = run(args.baseline_seconds, 1)
        print(
            f"baseline {args.baseline_seconds:g} s: rtt p50/p99 {base.p(base.rtt_ms, 50):.1f}/"
            f"{base.p(base.rtt_ms, 99):.1f} ms",
            flush=True,
        )
        soak = run(args.minutes * 60, 2)
    finally:
        local.stop()
    first, last = soak.samples[0], soak.samples[-1]
    growth, windows = rss_growth(soak.samples)
    ratio = soak.p(soak.rtt_ms, 99) / base.p(base.rtt_ms, 99)
    parked = [x.parked for x in soak.samples if x.parked >= 0]
    row = "| {} | {} | {} |\n"

    def setup(on_machine: str) -> str:
        return (
            f"a fresh `duplex up` (tiny preset, {args.sessions} slots, 4 cohorts, "
            f"{'flags: ' + args.up_args if args.up_args else 'its default flags: batch-invariant'}) and the "
            f"clients on one machine{on_machine}. Definitions in `bench/soak.py`: both runs are {args.sessions} "
            "client slots, each holding 30–120 s conversations one after another (steered phases, cut to the run's "
            f"time), {args.vanish:.0%} of them cancelled mid-way, a vanished session's slot reused only after its "
            f"resume grace ({'resumption off: freed at once' if args.no_resume else 'resumption on'}); baseline = "
            f"{args.baseline_seconds:g} s of that on the same server first, then the soak."
        )

    counts = (
        f"Soak: {soak.conversations} conversations ({soak.vanished} vanished mid-way, {len(soak.failed)} ended "
        f"with an error{': ' + '; '.join(sorted(set(soak.failed))[:3]) if soak.failed else ''}), "
        f"{len(soak.rtt_ms)} chunks answered, {soak.substituted} substituted, {soak.barge_ins} USER_BARGE_IN "
        f"events; parked slots at a sample: max {max(parked, default=0)}, mean "
        f"{statistics.mean(parked) if parked else 0:.1f} ({soak.parked_wait_s:.0f} client-slot seconds waited "
        f"for a grace); {soak.refused} starts refused as full and retried after the server's retry-after-ms."
    )
    server = (
        "| figure | start (after the baseline) | end (after the last session) |\n|:---|---:|---:|\n"
        + row.format("engine RSS MiB", f"{first.engine_rss_mb:.0f}", f"{last.engine_rss_mb:.0f}")
        + row.format("engine open fds", first.engine_fds, last.engine_fds)
        + row.format("engine threads", first.engine_threads, last.engine_threads)
        + row.format("engine asyncio tasks", first.tasks, last.tasks)
        + row.format("slots occupied", first.slots, last.slots)
        + row.format("parked sessions", first.parked, last.parked)
        + row.format("Envoy RSS MiB", f"{first.envoy_rss_mb:.0f}", f"{last.envoy_rss_mb:.0f}")
        + row.format("Envoy open fds", first.envoy_fds, last.envoy_fds)
        + row.format("Envoy threads", first.envoy_threads, last.envoy_threads)
    )
    runs = (
        "| run | conversations (vanished) | chunks | round trip p50 / p99 ms | engine part p50 / p99 ms | "
        "queue wait p99 ms | the rest p50 / p99 ms | late | steps regular / catch-up / split % | "
        "max parked | refused | client loop lag p99 ms |\n"
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        + run_row(f"baseline {args.baseline_seconds:g} s", base)
        + run_row(f"soak {args.minutes:g} min", soak)
    )
    targets = (
        "| figure | result | target |\n|:---|---:|:---|\n"
        + f"| engine RSS growth ({windows}) | {growth:+.1f} % | < 5 % |\n"
        + f"| soak p99 / baseline p99 | {ratio:.2f}× | ≤ 1.5× |\n"
    )
    text = f"Command: `{command()}` — {setup(': ' + machine())}\n\n{counts}\n\n{server}\n{runs}\n{targets}"
    print(text, flush=True)
    if not args.no_write:
        about = setup("")
        write_result(
            "soak",
            "Soak",
            targets,
            f'{about[0].upper()}{about[1:]} Figures of the run: "Soak: round trip, baseline and soak"; of the '
            f'server: "Soak: the server at the start and the end".\n\n{counts}',
        )
        write_result(
            "soak_runs",
            "Soak: round trip, baseline and soak",
            runs,
            'The run of "Soak". Round trip over every answered chunk of the conversations that ran to their end, '
            "split into the engine's part (chunk received → result queued: queue wait + step) and the rest (Envoy "
            "both ways and the client).",
        )
        write_result(
            "soak_server",
            "Soak: the server at the start and the end",
            server,
            'The run of "Soak": the engine process (the one of `duplex up` serving its /metrics) and its Envoy '
            "child (psutil), and the engine's "
            f"/metrics, sampled every {args.sample_s:g} s; at the start (after the baseline) and the end (after the "
            "last session ended: slots must be 0).",
        )


if __name__ == "__main__":
    main()
