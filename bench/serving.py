"""Serving benchmark: N concurrent real-time conversations against ``duplex up``.

    python bench/serving.py --cohorts 4,2         # N in 8,16,32,48,64; writes bench/results/serving.json
    python bench/serving.py --sessions 64 --seconds 10 --no-write
    python bench/serving.py --sessions 16,32,48,64 --seconds 75 --steady-after 15   # longer than the window
    python bench/serving.py --sessions 64 --seconds 60 --steady-after 15 --audio corpus   # real speech

Per audio chunk it measures, on the client's clock:
  round trip      = client receives the output of chunk k − chunk k was captured (its send is due then; a
                    client that sends it late counts its lag)
  model compute   = the engine's step + decode time for the batch chunk k was in (ChunkTiming.compute_ms)
  system-added    = round trip − model compute (phase wait for its cohort + queueing behind other cohorts'
                    steps + gRPC/Envoy/serialization)
  relay overhead  = system-added − queue wait (ChunkTiming.queue_wait_ms): Envoy, gRPC and Python only;
                    the sum of four legs, each printed (client and engine share the machine's clock):
                      send lag   the client sent chunk k − its capture end (the load generator's own lag)
                      in hop     the engine received it − the client sent it (client → Envoy → engine)
                      engine out the engine queued the result − its step's start − compute (output stage)
                      out hop    the client read the result − the engine queued it (engine → Envoy →
                                 client, the client's event loop included)
  engine span     = engine sent chunk k's output − engine received chunk k (server clock, ChunkTiming)
``--client-processes N`` spreads the sessions over N client processes, each with its own event loop and
channel: one loop reading a whole cohort's replies queues them behind each other, which is the load
generator's delay, not the server's (independent clients do not share a loop).
With ``--steady-after S`` only chunks captured S seconds or more into their conversation count (the steady
state, once every session's attention window is full and all sessions have joined); the ramp is left out.
The users say ``speechlike`` tones (voiced bursts and pauses) unless ``--audio corpus``: the user tracks of the
load test's default corpus (espeak-ng speech, built on first use), which cost the model's step more.
A load level is *real-time* when every chunk came back, none was substituted, and the chunk round trip
p99 ≤ chunk_ms / 2 (docs/design.md). Client phases (``--phases``):
  steered  sessions start at random moments within one chunk period and follow the server's phase hint
           (``SessionReady.send_in_us``), as ``duplex talk`` does
  free     random start moments, the hint ignored: free-running clients at random phases
  aligned  all sessions start at once and ignore the hint (the worst case for phase cohorts)
  burst    all sessions start at the same instant and follow the hint (a crowd reconnecting at once: every
           start and SessionReady queues behind the others', so the hints are tens of ms off)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from duplex.loadtest.corpus import default_corpus, load_corpus
from duplex.loadtest.local import LocalUp
from duplex.serving import client
from duplex.serving.heap import freeze_startup_heap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import result_name, write_result

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Level:
    n: int
    chunks: int
    missing: int
    substituted: int
    rtt_p50: float
    rtt_p99: float
    sys_p50: float
    sys_p99: float
    relay_p50: float
    relay_p99: float
    legs: dict[str, tuple[float, float]]
    """Relay overhead by leg (send lag, in hop, engine out, out hop): p50 / p99 ms."""
    span_p50: float
    span_p99: float
    wait_p50: float
    step_p50: float
    step_p99: float
    batch_p50: float
    cohorts: int = 0
    phases: str = "random"
    chunk_ms: int = 200

    @property
    def realtime(self) -> bool:
        return self.missing == 0 and self.substituted == 0 and self.rtt_p99 <= self.chunk_ms / 2


CHUNK_MS = 200
"""The tiny preset's chunk (ms); ``ClientJob.chunk_ms`` for other models."""
RATE = 16000
"""The tiny preset's sample rate; ``ClientJob.rate`` for other models."""


def speechlike(seconds: float, seed: int, sr: int = RATE) -> np.ndarray:
    """Alternating 1–2 s voiced bursts and pauses (a stand-in for a user talking), at ``sr`` Hz."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    t = 0.0
    while t < seconds:
        dur = rng.uniform(0.6, 1.6)
        n = int(dur * sr)
        if len(out) % 2 == 0:
            f0 = rng.uniform(100, 220)
            tt = np.arange(n) / sr
            sig = np.sin(2 * np.pi * f0 * tt) + 0.5 * np.sin(4 * np.pi * f0 * tt)
            out.append((sig * 0.2 * 32767).astype(np.int16))
        else:
            out.append(np.zeros(n, dtype=np.int16))
        t += dur
    return np.concatenate(out)[: int(seconds * sr)]


def corpus_speech(corpus: Path, seconds: float, sessions: tuple[int, ...]) -> dict[int, np.ndarray]:
    """The user tracks of a corpus (espeak-ng speech, turns and pauses): session i gets conversation
    i mod k, rotated by 7 s for each earlier session that got the same one, so no two sessions send the same
    audio at the same moment of their conversation."""
    convs = load_corpus(corpus, min_seconds=seconds)
    n, sr = len(convs), 16000
    return {i: np.roll(convs[i % n].user, -(i // n) * 7 * sr)[: int(seconds * sr)] for i in sessions}


AUDIO = ("speechlike", "corpus")


PHASES = ("steered", "free", "aligned", "burst")


LEGS = ("send lag", "in hop", "engine out", "out hop")


@dataclass
class Samples:
    """Per-chunk figures (ms) of some conversations, before percentiles: mergeable across client processes."""

    rtt: list[float] = field(default_factory=list)
    sysadd: list[float] = field(default_factory=list)
    relay: list[float] = field(default_factory=list)
    wait: list[float] = field(default_factory=list)
    span: list[float] = field(default_factory=list)
    legs: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in LEGS})
    steps: dict[tuple[int, int], tuple[float, int]] = field(default_factory=dict)
    missing: int = 0
    substituted: int = 0
    total: int = 0

    def merge(self, o: Samples) -> None:
        self.rtt += o.rtt
        self.sysadd += o.sysadd
        self.relay += o.relay
        self.wait += o.wait
        self.span += o.span
        for k in LEGS:
            self.legs[k].extend(o.legs[k])
        self.steps.update(o.steps)
        self.missing += o.missing
        self.substituted += o.substituted
        self.total += o.total


def collect(convs: list[client.Conversation], steady_after: float, chunk_ms: int = CHUNK_MS) -> Samples:
    first_steady = int(steady_after * 1000 / chunk_ms)
    s = Samples()
    for c in convs:
        expected = len(c.sent_us)
        got = c.of("audio")
        s.missing += expected - len(got) + (0 if c.code == grpc.StatusCode.OK else 1)
        s.substituted += sum(r.event.audio.timing.substituted for r in got if r.event.audio.seq < first_steady)
        for r in got:
            a = r.event.audio
            t = a.timing
            if a.seq < first_steady:
                continue
            s.total += 1
            if t.substituted:
                s.substituted += 1
                continue
            captured = c.capture_end_us(a.seq)
            rt = (r.t_us - captured) / 1e3  # from the chunk's capture end
            sent = c.sent_us[a.seq]
            s.legs["send lag"].append((sent - captured) / 1e3)
            s.legs["in hop"].append((t.server_recv_us - sent) / 1e3)
            s.legs["engine out"].append((t.server_send_us - t.step_start_us) / 1e3 - t.compute_ms)
            s.legs["out hop"].append((r.t_us - t.server_send_us) / 1e3)
            s.rtt.append(rt)
            s.sysadd.append(rt - t.compute_ms)
            s.relay.append(rt - t.compute_ms - t.queue_wait_ms)
            s.wait.append(t.queue_wait_ms)
            s.span.append((t.server_send_us - t.server_recv_us) / 1e3)
            s.steps[(t.cohort, t.step_start_us)] = (t.compute_ms, t.batch_size)
    return s


@dataclass(frozen=True)
class ClientJob:
    """The sessions one client process holds: session i joins at ``t0 + i / spawn_rate`` + a random moment
    of its chunk period (``t0`` on the monotonic clock, which every process on the machine shares; None: as
    soon as this process has made its audio)."""

    target: str
    sessions: tuple[int, ...]
    seconds: float
    phases: str
    spawn_rate: float
    steady_after: float
    t0: float | None = None
    corpus: Path | None = None
    """Send this corpus's user tracks (``corpus_speech``) instead of ``speechlike`` tones."""
    chunk_ms: int = CHUNK_MS
    rate: int = RATE
    """The model's chunk and sample rate (the corpus is at the tiny preset's 16 kHz only)."""


async def converse_all(job: ClientJob) -> Samples:
    chunk_samples = job.rate * job.chunk_ms // 1000
    # every conversation's audio is made before the first one starts: made on the event loop as each joined
    # (~40 ms of numpy per 60 s conversation on a quiet 2-core VM, more under load), it held up the other
    # clients' sends while they joined; their chunks went out tens of ms off the phase hint and their
    # cohorts stayed scattered for the whole run
    speech = (
        corpus_speech(job.corpus, job.seconds, job.sessions)
        if job.corpus
        else {i: speechlike(job.seconds, i, job.rate) for i in job.sessions}
    )
    audio = {i: client.split_chunks(x, chunk_samples) for i, x in speech.items()}
    # the load generator's own full collections: its heap grows with every event it records, and one full
    # collection of it (30-70 ms on the 2-core VM, once per run of 64 × 60 s conversations) held up every
    # session's sends at once — and took a core from the server. Real clients are separate processes with
    # small heaps; here what exists is frozen (duplex.serving.heap) and nothing is collected while they run.
    freeze_startup_heap()
    gc.disable()
    t0 = time.monotonic() if job.t0 is None else job.t0
    late = time.monotonic() - t0
    if job.t0 is not None and late > 0:  # joins already due would all start at once: not the level asked for
        raise SystemExit(f"client process not ready {late:.1f} s after its start: raise SPAWN_MARGIN_S")
    async with grpc.aio.insecure_channel(job.target) as ch:

        async def one(i: int) -> client.Conversation:
            at = t0
            if job.phases not in ("aligned", "burst"):  # join at spawn_rate, each at a random moment of its period
                at += i / job.spawn_rate + random.Random(i).uniform(0, job.chunk_ms / 1000)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            steered = job.phases in ("steered", "burst")
            start = client.start_event(sample_rate=job.rate, chunk_ms=job.chunk_ms)
            return await client.converse(ch, audio[i], chunk_ms=job.chunk_ms, start=start, follow_hint=steered)

        try:
            convs = await asyncio.gather(*(one(i) for i in job.sessions))
        finally:
            gc.enable()
    return collect(list(convs), job.steady_after, job.chunk_ms)


def client_process(job: ClientJob) -> Samples:
    return asyncio.run(converse_all(job))


SPAWN_MARGIN_S = 5.0
"""Client processes start their sessions this long after they are launched (time to import and make audio)."""


def run_level(
    target: str,
    n: int,
    seconds: float,
    phases: str,
    spawn_rate: float,
    steady_after: float = 0.0,
    processes: int = 1,
    corpus: Path | None = None,
    chunk_ms: int = CHUNK_MS,
    rate: int = RATE,
) -> Level:
    """``n`` conversations from ``processes`` client processes (session i in process i mod processes)."""
    if processes == 1:
        job = ClientJob(
            target, tuple(range(n)), seconds, phases, spawn_rate, steady_after, None, corpus, chunk_ms, rate
        )
        s = client_process(job)
    else:
        t0 = time.monotonic() + SPAWN_MARGIN_S
        jobs = [
            ClientJob(
                target,
                tuple(range(p, n, processes)),
                seconds,
                phases,
                spawn_rate,
                steady_after,
                t0,
                corpus,
                chunk_ms,
                rate,
            )
            for p in range(processes)
        ]
        s = Samples()
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            for part in pool.map(client_process, jobs):
                s.merge(part)
    step_ms = [x[0] for x in s.steps.values()] or [0.0]
    batch = [x[1] for x in s.steps.values()] or [0]

    def p(x: list[float], q: float) -> float:
        return float(np.percentile(x, q)) if x else float("nan")

    return Level(
        n,
        s.total,
        s.missing,
        s.substituted,
        p(s.rtt, 50),
        p(s.rtt, 99),
        p(s.sysadd, 50),
        p(s.sysadd, 99),
        p(s.relay, 50),
        p(s.relay, 99),
        {k: (p(v, 50), p(v, 99)) for k, v in s.legs.items()},
        p(s.span, 50),
        p(s.span, 99),
        p(s.wait, 50),
        p(step_ms, 50),
        p(step_ms, 99),
        p(batch, 50),
        chunk_ms=chunk_ms,
    )


def start_up(max_sessions: int, cohorts: int, extra: list[str]) -> LocalUp:
    """``duplex up --max-sessions N --cohorts C EXTRA…`` started (its address in ``.address``, its log in
    ``.log``); raises LocalUpError (with the log's tail) when it is not ready within 120 s."""
    up = LocalUp(args=["--max-sessions", str(max_sessions), "--cohorts", str(cohorts), *extra])
    up.start(deadline_s=120.0)
    return up


def table(levels: list[Level]) -> str:
    head = (
        "| phases | cohorts | sessions | real-time | chunk round trip p50 / p99 ms | system-added p50 / p99 ms | "
        "relay overhead p50 / p99 ms | engine span p50 / p99 ms | queue wait p50 ms | step p50 / p99 ms | "
        "rows/step p50 |\n"
        "|:---|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = "".join(
        f"| {lv.phases} | {lv.cohorts} | {lv.n} | {'yes' if lv.realtime else 'no'} | "
        f"{lv.rtt_p50:.1f} / {lv.rtt_p99:.1f} | "
        f"{lv.sys_p50:.1f} / {lv.sys_p99:.1f} | {lv.relay_p50:.1f} / {lv.relay_p99:.1f} | "
        f"{lv.span_p50:.1f} / {lv.span_p99:.1f} | {lv.wait_p50:.1f} | "
        f"{lv.step_p50:.1f} / {lv.step_p99:.1f} | {lv.batch_p50:.0f} |\n"
        for lv in levels
    )
    return head + rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="8,16,32,48,64", help="comma-separated load levels")
    ap.add_argument("--seconds", type=float, default=8.0, help="audio per conversation")
    ap.add_argument("--phases", default="steered", help=f"comma-separated client phase modes: {', '.join(PHASES)}")
    ap.add_argument("--spawn-rate", type=float, default=32.0, help="sessions joining per second (steered, free)")
    ap.add_argument("--cohorts", default="4", help="comma-separated phase cohort counts to compare (up --cohorts)")
    ap.add_argument(
        "--steady-after",
        type=float,
        default=0.0,
        help="count only chunks captured this many seconds or more into each conversation",
    )
    ap.add_argument(
        "--audio",
        default="speechlike",
        choices=AUDIO,
        help="what the users say: speech-like tones, or the load test's default long corpus (espeak-ng speech, "
        "built on first use)",
    )
    ap.add_argument("--up-args", default="", help="more `duplex up` flags, e.g. --no-batch-invariant")
    ap.add_argument(
        "--section", default="Serving", help="docs/benchmarks.md section to write (bench/results/ file: its name)"
    )
    ap.add_argument("--target", default="", help="use a running front door (or engine) instead of starting duplex up")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/results/ and docs/benchmarks.md")
    ap.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="spread the sessions over this many client processes (one event loop's queueing is the load "
        "generator's, not the server's)",
    )
    args = ap.parse_args()
    levels_n = [int(x) for x in args.sessions.split(",")]
    levels: list[Level] = []
    if bad := set(args.phases.split(",")) - set(PHASES):
        ap.error(f"--phases: unknown {sorted(bad)}; choose from {PHASES}")
    # built here, once, before any client starts (a few seconds of espeak-ng on first use)
    corpus = default_corpus(min_seconds=args.seconds) if args.audio == "corpus" else None
    runs = [(c, ph) for ph in args.phases.split(",") for c in (int(x) for x in args.cohorts.split(","))]
    for cohorts, phases in runs:
        up = None
        target = args.target
        if not target:
            up = start_up(max(levels_n), cohorts, args.up_args.split())
            target = up.address
        try:
            for n in levels_n:
                lv = run_level(
                    target,
                    n,
                    args.seconds,
                    phases,
                    args.spawn_rate,
                    args.steady_after,
                    args.client_processes,
                    corpus,
                )
                lv.cohorts, lv.phases = cohorts, phases
                levels.append(lv)
                print(
                    f"{phases} C={cohorts} N={n}: realtime={lv.realtime} rtt p50/p99 "
                    f"{lv.rtt_p50:.1f}/{lv.rtt_p99:.1f} ms, "
                    f"system-added p50/p99 {lv.sys_p50:.1f}/{lv.sys_p99:.1f} ms, relay p50/p99 "
                    f"{lv.relay_p50:.1f}/{lv.relay_p99:.1f} ms, step p50 {lv.step_p50:.1f} ms "
                    f"({lv.batch_p50:.0f} rows), missing {lv.missing}, substituted {lv.substituted}\n  relay legs "
                    + ", ".join(f"{k} {a:.1f}/{b:.1f}" for k, (a, b) in lv.legs.items()),
                    flush=True,
                )
        finally:
            if up is not None:
                up.stop()
    first = (levels[0].cohorts, levels[0].phases)
    mine = sorted((lv for lv in levels if (lv.cohorts, lv.phases) == first), key=lambda lv: lv.n)

    def largest(ok: Callable[[Level], bool]) -> int:
        """The largest N such that it and every smaller level measured pass."""
        best = 0
        for lv in mine:
            if not ok(lv):
                break
            best = lv.n
        return best

    best = largest(lambda lv: lv.realtime)
    low_n = largest(lambda lv: lv.sys_p99 <= 20.0)
    print(
        f"largest real-time N ({first[1]} phases, {first[0]} cohorts): {best}; "
        f"with system-added p99 <= 20 ms at every level up to it: {low_n}"
    )
    cmd = "python bench/serving.py " + " ".join(sys.argv[1:])
    shipped = (ROOT / "model" / "checkpoints" / "tiny.safetensors").exists()
    weights = "shipped checkpoint" if shipped else "random weights"
    text = (
        "`duplex up` (engine behind Envoy and the session picker, tiny preset, "
        f"{weights}"
        f") and the clients ({args.client_processes} process{'es' if args.client_processes > 1 else ''}) on one "
        f"machine. Chunk {CHUNK_MS} ms, {args.seconds:.0f} s of "
        + ("the default long corpus's user speech (espeak-ng)" if corpus else "speech-like audio")
        + " per conversation"
        + (
            f", figures from the steady state: chunks captured {args.steady_after:g} s or more into their "
            "conversation (the ramp is left out; substituted chunks anywhere still fail a level)"
            if args.steady_after
            else ""
        )
        + f". Phases: `steered` = sessions join at {args.spawn_rate:g}/s, each at a random "
        "moment of its chunk period (independent clients), and follow the server's phase hint; `free` = the "
        "same joins, hint ignored (free-running clients at random phases); `burst` = all start at the same instant "
        "and follow the hint; `aligned` = all start at once, hint "
        "ignored. "
        "Definitions in `bench/serving.py`; system-added = round trip − model compute.\n\n"
        f"Largest real-time N with {first[1]} phases and {first[0]} cohorts, it and every "
        f"smaller level (every chunk back, none substituted, round trip p99 ≤ {CHUNK_MS // 2} ms): **{best}** "
        "(target ≥ 64). Largest N with system-added p99 ≤ 20 ms at it and every smaller level: "
        f"**{low_n}** (target: at capacity). The engine had {max(levels_n)} slots."
    )
    if not args.no_write:
        write_result(result_name(args.section), args.section, table(levels), text, cmd=cmd.strip())


if __name__ == "__main__":
    main()
