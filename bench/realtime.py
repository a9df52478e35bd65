"""Realtime endpoint benchmark: the WebSocket endpoint's added latency over ``Converse``.

    python bench/realtime.py                       # 16 sessions each way, 8 s; prints, no write
    python bench/realtime.py --sessions 16 --seconds 20 --write   # appends/replaces docs/benchmarks.md ## Realtime

One ``duplex up --http-port 0``; N conversations over ``/v1/realtime`` (24 kHz PCM16 pieces of one chunk,
``duplex_events=1`` for the per-chunk ``duplex.chunk`` event) and N over gRPC ``Converse`` (16 kHz chunks), all
at once, each joining at a random moment of its chunk period and sending on the live-microphone schedule
(piece/chunk k at capture start + (k+1)·chunk_ms; neither follows the phase hint, which a WebSocket client
cannot get). Per chunk, on the client's clock:
  round trip = received the output computed from chunk k (``duplex.chunk`` / ``ModelAudio`` seq k) − sent the
               piece/chunk that completed it
  compute    = the engine's step + decode time of the batch it was in (``compute_ms``)
  added      = round trip − compute
The endpoint's added latency is the difference of the two kinds' figures (p50 and p99). It holds the JSON and
base64 work, the two resamplers and the extra hop inside the gateway — not the constant ``PRIME_MS`` shift of
each resampler's output (serving/realtime/audio.py), which moves the audio's time axis, not the round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import soxr

from duplex.serving import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section

from serving import speechlike

CHUNK_MS = 200
WIRE_RATE = 24000


@dataclass
class Samples:
    rtt: list[float]
    added: list[float]
    missing: int


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


async def ws_session(url: str, seconds: float, seed: int) -> Samples:
    await asyncio.sleep(random.uniform(0, CHUNK_MS / 1000))
    audio16 = speechlike(seconds, seed)
    wire = soxr.resample(audio16, 16000, WIRE_RATE, "HQ").astype("<i2")
    piece = WIRE_RATE * CHUNK_MS // 1000
    pieces = [wire[i * piece : (i + 1) * piece].tobytes() for i in range(len(wire) // piece)]
    sent: dict[int, float] = {}
    got: dict[int, tuple[float, float]] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("realtime",)) as ws:

        async def reader() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                ev = json.loads(msg.data)
                if ev["type"] == "duplex.chunk":
                    got[ev["seq"]] = (time.monotonic(), ev["compute_ms"])
                    if len(got) == len(pieces):
                        return
                elif ev["type"] == "error":
                    raise RuntimeError(ev["error"]["message"])

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        for k, pcm in enumerate(pieces):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * CHUNK_MS / 1000 - time.monotonic()))
            sent[k] = time.monotonic()
            await ws.send_str(
                json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
            )
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
    rtt = [(got[k][0] - sent[k]) * 1e3 for k in got if k in sent]
    added = [(got[k][0] - sent[k]) * 1e3 - got[k][1] for k in got if k in sent]
    return Samples(rtt, added, len(pieces) - len(got))


async def grpc_session(ch: grpc.aio.Channel, seconds: float, seed: int) -> Samples:
    await asyncio.sleep(random.uniform(0, CHUNK_MS / 1000))
    chunks = client.split_chunks(speechlike(seconds, seed), 16000 * CHUNK_MS // 1000)
    conv = await client.converse(ch, chunks, chunk_ms=CHUNK_MS, follow_hint=False)
    rtt, added = [], []
    for r in conv.of("audio"):
        a = r.event.audio
        if a.seq in conv.sent_us:
            rt = (r.t_us - conv.sent_us[a.seq]) / 1e3
            rtt.append(rt)
            added.append(rt - a.timing.compute_ms)
    return Samples(rtt, added, len(chunks) - len(conv.of("audio")))


def merge(xs: list[Samples]) -> Samples:
    return Samples([v for s in xs for v in s.rtt], [v for s in xs for v in s.added], sum(s.missing for s in xs))


async def run(grpc_target: str, ws_url: str, n: int, seconds: float) -> tuple[Samples, Samples]:
    async with grpc.aio.insecure_channel(grpc_target) as ch:
        results = await asyncio.gather(
            *(ws_session(ws_url, seconds, 1000 + i) for i in range(n)),
            *(grpc_session(ch, seconds, 2000 + i) for i in range(n)),
        )
    return merge(list(results[:n])), merge(list(results[n:]))


def start_up(max_sessions: int, cohorts: int) -> tuple[subprocess.Popen[str], str, str]:
    cmd = [sys.executable, "-c", "from duplex.cli import main; main()", "up", "--port", "0", "--http-port", "0"]
    cmd += ["--no-agent", "--max-sessions", str(max_sessions), "--cohorts", str(cohorts)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    target = ""
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        if m := re.search(r"ready at (\S+)", line):
            target = m.group(1)
        if m := re.search(r"realtime at (ws://\S+)", line):
            return proc, target, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("duplex up --http-port 0 did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=16, help="sessions of each kind (WebSocket and gRPC)")
    ap.add_argument("--seconds", type=float, default=8.0, help="audio per conversation")
    ap.add_argument(
        "--cohorts",
        type=int,
        default=1,
        help="engine phase cohorts (1: every chunk waits for the same step phase, so neither kind of client is"
        " favoured by where its chunks land in the step cycle)",
    )
    ap.add_argument("--write", action="store_true", help="write the figures to docs/benchmarks.md ## Realtime")
    args = ap.parse_args()
    proc, target, ws_url = start_up(2 * args.sessions, args.cohorts)
    try:
        ws, rpc = asyncio.run(run(target, ws_url + "?model=duplex&duplex_events=1", args.sessions, args.seconds))
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
    rows = [("WebSocket /v1/realtime", ws), ("gRPC Converse", rpc)]
    table = (
        "| path | chunks | missing | round trip p50 / p99 ms | added (round trip − compute) p50 / p99 ms |\n"
        "|:---|---:|---:|---:|---:|\n"
        + "".join(
            f"| {name} | {len(s.rtt)} | {s.missing} | {pct(s.rtt, 50):.1f} / {pct(s.rtt, 99):.1f} | "
            f"{pct(s.added, 50):.1f} / {pct(s.added, 99):.1f} |\n"
            for name, s in rows
        )
    )
    diff = (
        f"Endpoint's added latency over `Converse` (WebSocket − gRPC round trip): p50 "
        f"**{pct(ws.rtt, 50) - pct(rpc.rtt, 50):.1f} ms**, p99 **{pct(ws.rtt, 99) - pct(rpc.rtt, 99):.1f} ms**."
    )
    print(table + "\n" + diff)
    if args.write:
        text = (
            f"Command: `python bench/realtime.py {' '.join(sys.argv[1:])}` — one `duplex up --http-port 0` (tiny "
            f"preset, {args.cohorts} cohort(s)), {args.sessions} sessions over the WebSocket endpoint and "
            f"{args.sessions} over gRPC at the "
            f"same time, {args.seconds:g} s of speech-like audio each, live-microphone schedule, chunk {CHUNK_MS} "
            f"ms; clients on the same machine: {machine()}. Definitions in `bench/realtime.py`.\n\n"
            f"{table}\n{diff}\n"
        )
        write_section("Realtime", text)


if __name__ == "__main__":
    main()
