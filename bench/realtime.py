"""Realtime endpoint benchmark: the WebSocket endpoint's added latency over ``Converse``, in pairs.

    python bench/realtime.py                                      # 16 pairs, 8 s; prints, no write
    python bench/realtime.py --sessions 16 --seconds 30 --write   # writes bench/results/realtime.json

One ``duplex up --http-port 0 --cohorts 1``. N pairs; pair i = one WebSocket session (``/v1/realtime``,
``duplex_events=1``, 24 kHz pieces) and one gRPC ``Converse`` session (16 kHz chunks) with the same audio. All
2N sessions are opened and ready first (the WebSocket one by an empty ``input_audio_buffer.append``); then one
scheduler sends chunk k of every session at the same tick, capture start + (k+1)·chunk_ms (live-microphone
rule: a chunk leaves at the end of its capture period), the two of a pair back to back (which goes first
alternates between pairs). With one cohort both chunks of a pair join the same engine step; that is checked
per chunk (same ``step_start_us``) and the chunks of a pair stepped apart are counted and left out.

Per pair and chunk k, on the client's monotonic clock:
  rtt    = received the last frame carrying chunk k's output (WebSocket: ``duplex.chunk`` seq k, or the
           ``response.output_audio.delta`` that follows it when the model speaks; gRPC: ``ModelAudio`` seq k)
           − sent chunk k (the piece that completed it)
  added  = rtt_ws − rtt_grpc
Both waited for the same step, so where the chunk landed in the step cycle cancels out; what remains is the
endpoint's work on the way out (and on the way in where it delayed the step) plus client-side noise.

In the engine, per chunk, ``duplex_engine_realtime_bridge_seconds{direction}`` (read from its /metrics at the
end; quantiles interpolated within buckets as Prometheus' ``histogram_quantile``): ingress = frame received →
ClientEvent taken by the engine's session; egress = ModelAudio from the session → its frames written. Both
sessions of a pair go through ``duplex up``'s Envoy (the gRPC one on its gRPC listener, the WebSocket on its
Realtime listener, placed by the session picker).

Resampler delay: both resamplers (``duplex.serving.realtime.audio.StreamResampler``) are fed a click in
200 ms pieces; the shift of the click in their output is the constant delay each adds to the audio's time axis
(the ``PRIME_MS`` silence that keeps soxr's held-back samples from delaying whole chunks). It is not in the
round trip — chunk k still leaves when its piece arrives — but in the turn-taking latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import soxr
from prometheus_client.parser import text_string_to_metric_families

from duplex.loadtest.local import LocalUp
from duplex.serving import client
from duplex.serving.ports import free_port_pair
from duplex.serving.realtime.audio import PRIME_MS, StreamResampler
from duplex.v1 import duplex_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_result

from serving import speechlike

CHUNK_MS = 200
WIRE_RATE = 24000
MODEL_RATE = 16000
BRIDGE = "duplex_engine_realtime_bridge_seconds"


@dataclass
class Track:
    """One session's chunks: when each was sent and when its output was received (client monotonic s), and
    the engine step that consumed it (``step_start_us``)."""

    sent: dict[int, float] = field(default_factory=dict)
    received: dict[int, float] = field(default_factory=dict)
    step: dict[int, int] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def rtt_ms(self, k: int) -> float:
        return (self.received[k] - self.sent[k]) * 1e3


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


class WsSession:
    def __init__(self, url: str, audio16: np.ndarray) -> None:
        self.url = url
        wire = soxr.resample(audio16, MODEL_RATE, WIRE_RATE, "HQ").astype("<i2")
        piece = WIRE_RATE * CHUNK_MS // 1000
        self.frames = [
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(wire[i : i + piece].tobytes()).decode()}
            )
            for i in range(0, len(wire) - piece + 1, piece)
        ]  # encoded beforehand: the client's own JSON work stays out of the send instant
        self.track = Track()
        self._http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._http = aiohttp.ClientSession()
        self.ws = await self._http.ws_connect(self.url, protocols=("realtime",), max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": ""}))  # starts it

    async def _read(self) -> None:
        assert self.ws is not None
        last = -1
        async for msg in self.ws:
            t = time.monotonic()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            ev = json.loads(msg.data)
            kind = ev["type"]
            if kind == "duplex.chunk":
                last = ev["seq"]
                self.track.received[last] = t
                self.track.step[last] = ev["step_start_us"]
            elif kind == "response.output_audio.delta" and last >= 0:
                self.track.received[last] = t  # the audio of the chunk just announced
            elif kind == "duplex.session.ready":
                self.track.ready.set()
            elif kind == "error":
                raise RuntimeError(f"WebSocket session: {ev['error']['message']}")

    async def send(self, k: int) -> None:
        assert self.ws is not None
        self.track.sent[k] = time.monotonic()
        await self.ws.send_str(self.frames[k])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            if self._reader.done():
                self._reader.result()  # re-raises an error event
            self._reader.cancel()
        if self._http is not None:
            await self._http.close()


class GrpcSession:
    def __init__(self, channel: grpc.aio.Channel, audio16: np.ndarray) -> None:
        self.chunks = client.split_chunks(audio16, MODEL_RATE * CHUNK_MS // 1000)
        self.call = channel.stream_stream(
            "/duplex.v1.Duplex/Converse",
            request_serializer=pb.ClientEvent.SerializeToString,
            response_deserializer=pb.ServerEvent.FromString,
        )()
        self.track = Track()
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._reader = asyncio.create_task(self._read())
        await self.call.write(client.start_event(chunk_ms=CHUNK_MS))

    async def _read(self) -> None:
        while (ev := await self.call.read()) is not grpc.aio.EOF:
            t = time.monotonic()
            assert isinstance(ev, pb.ServerEvent)
            if ev.HasField("audio"):
                self.track.received[ev.audio.seq] = t
                self.track.step[ev.audio.seq] = ev.audio.timing.step_start_us
            elif ev.HasField("ready"):
                self.track.ready.set()
            elif ev.HasField("error"):
                raise RuntimeError(f"gRPC session: {ev.error.message}")

    async def send(self, k: int) -> None:
        t = time.monotonic()
        self.track.sent[k] = t
        await self.call.write(client.audio_event(k, self.chunks[k]))

    async def close(self) -> None:
        if not self.call.done():
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self.call.write(pb.ClientEvent(end=pb.EndOfStream()))
                await self.call.done_writing()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 30)  # re-raises what ended it early


@dataclass
class Paired:
    added: list[float]
    """rtt_ws − rtt_grpc per pair and chunk, ms (both chunks in one step)."""
    rtt_ws: list[float]
    rtt_grpc: list[float]
    apart: int
    """Chunks of a pair the engine stepped apart (left out)."""
    missing: int
    """Chunks without an output on either side (left out)."""


async def run(grpc_target: str, ws_url: str, n: int, seconds: float, skip: int) -> Paired:
    async with grpc.aio.insecure_channel(grpc_target) as ch:
        pairs = []
        for i in range(n):
            audio16 = speechlike(seconds, 1000 + i)
            pairs.append((WsSession(ws_url, audio16), GrpcSession(ch, audio16)))
        chunks = min(min(len(w.frames), len(g.chunks)) for w, g in pairs)
        try:
            for w, g in pairs:
                await w.open()
                await g.open()
            await asyncio.wait_for(
                asyncio.gather(*(s.track.ready.wait() for p in pairs for s in p)), 60
            )  # every session is in the engine before the first tick
            start = time.monotonic() + 0.1  # capture start of chunk 0
            for k in range(chunks):
                await asyncio.sleep(max(0.0, start + (k + 1) * CHUNK_MS / 1000 - time.monotonic()))
                for i, (w, g) in enumerate(pairs):
                    first, second = (w, g) if i % 2 == 0 else (g, w)
                    await first.send(k)
                    await second.send(k)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(len(s.track.received) >= chunks for p in pairs for s in p):
                await asyncio.sleep(0.05)  # poll for the last outputs, up to the deadline
        finally:
            for w, g in pairs:
                await w.close()
                await g.close()
    out = Paired([], [], [], 0, 0)
    for w, g in pairs:
        for k in range(skip, chunks):
            if k not in w.track.received or k not in g.track.received:
                out.missing += 1
            elif w.track.step[k] != g.track.step[k]:
                out.apart += 1
            else:
                out.rtt_ws.append(w.track.rtt_ms(k))
                out.rtt_grpc.append(g.track.rtt_ms(k))
                out.added.append(out.rtt_ws[-1] - out.rtt_grpc[-1])
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile``: cumulative (upper bound, count) pairs → the q-quantile, linear
    within the bucket it falls in."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def bridge_figures(metrics_url: str) -> dict[str, tuple[float, float, float, int]]:
    """direction → (p50, p99, mean) in ms and the chunk count, from the engine's /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != BRIDGE:
            continue
        for s in family.samples:
            d = s.labels["direction"]
            if s.name.endswith("_bucket"):
                buckets.setdefault(d, []).append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                sums[d] = s.value
            elif s.name.endswith("_count"):
                counts[d] = s.value
    return {
        d: (
            histogram_quantile(0.5, buckets[d]) * 1e3,
            histogram_quantile(0.99, buckets[d]) * 1e3,
            sums[d] / counts[d] * 1e3 if counts[d] else float("nan"),
            int(counts[d]),
        )
        for d in ("ingress", "egress")
        if d in buckets
    }


def resampler_delay_ms(in_rate: int, out_rate: int) -> float:
    """Shift of a click through one ``StreamResampler`` fed 200 ms pieces (median over clicks at several
    places of a piece), in ms."""
    piece = in_rate * CHUNK_MS // 1000
    signal = np.zeros(10 * piece, dtype="<i2")
    places = [k * piece + off for k, off in enumerate((0, piece // 7, piece // 3, piece // 2, piece - 5), start=2)]
    signal[places] = 20000
    r = StreamResampler(in_rate, out_rate)
    out = np.frombuffer(b"".join(r.feed(signal[i : i + piece].tobytes()) for i in range(0, len(signal), piece)), "<i2")
    shifts = []
    for p in places:
        lo = int(p * out_rate / in_rate)
        window = np.abs(out[lo : lo + out_rate // 10].astype(np.int32))  # the click lands within 100 ms
        shifts.append((lo + int(np.argmax(window))) / out_rate * 1e3 - p / in_rate * 1e3)
    return float(np.median(shifts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=16, help="pairs (one WebSocket + one gRPC session each)")
    ap.add_argument("--seconds", type=float, default=8.0, help="audio per conversation")
    ap.add_argument("--skip", type=int, default=2, help="first chunks of each session left out (warm-up)")
    ap.add_argument("--write", action="store_true", help="write bench/results/realtime.json and docs/benchmarks.md")
    args = ap.parse_args()
    delay_in, delay_out = resampler_delay_ms(WIRE_RATE, MODEL_RATE), resampler_delay_ms(MODEL_RATE, WIRE_RATE)
    metrics_port = free_port_pair()  # the engine's /metrics on metrics_port (the picker's on metrics_port + 1)
    up_args = ["--http-port", "0", "--no-agent", "--max-sessions", str(2 * args.sessions), "--cohorts", "1"]
    with LocalUp(args=[*up_args, "--metrics-port", str(metrics_port)]) as up:  # ready: gRPC and Realtime
        paired = asyncio.run(run(up.address, up.realtime + "?duplex_events=1", args.sessions, args.seconds, args.skip))
        bridge = bridge_figures(f"http://127.0.0.1:{metrics_port}/metrics")
    a = paired.added
    table = (
        "| per chunk, ms | p50 | p99 | chunks |\n|:---|---:|---:|---:|\n"
        f"| **added = rtt WebSocket − rtt gRPC** (same audio, same tick, same step) | **{pct(a, 50):.1f}** | "
        f"**{pct(a, 99):.1f}** | {len(a)} |\n"
        f"| round trip, WebSocket `/v1/realtime` | {pct(paired.rtt_ws, 50):.1f} | {pct(paired.rtt_ws, 99):.1f} | "
        f"{len(paired.rtt_ws)} |\n"
        f"| round trip, gRPC `Converse` | {pct(paired.rtt_grpc, 50):.1f} | {pct(paired.rtt_grpc, 99):.1f} | "
        f"{len(paired.rtt_grpc)} |\n"
        + "".join(
            f"| in the engine: bridge {d} (`{BRIDGE}`; mean {mean:.2f}) | {p50:.2f} | {p99:.2f} | {count} |\n"
            for d, (p50, p99, mean, count) in bridge.items()
        )
    )
    notes = (
        f"Left out: the first {args.skip} chunks of each session (warm-up), {paired.apart} chunk pair(s) the "
        f"engine stepped apart, {paired.missing} without an output. Constant resampler delay on the audio's time "
        f"axis (a click through each `StreamResampler`, 200 ms pieces): in (24→16 kHz) {delay_in:.1f} ms, out "
        f"(16→24 kHz) {delay_out:.1f} ms — the `PRIME_MS` = {PRIME_MS} ms priming of each; it adds "
        f"{delay_in + delay_out:.0f} ms to turn-taking latency over the Realtime path, not to the round trip."
    )
    print(table + "\n" + notes)
    if args.write:
        setup = (
            "One `duplex up --http-port 0 --cohorts 1` (tiny preset; both kinds of session through its Envoy), "
            f"{args.sessions} pairs of one WebSocket and one gRPC session ({2 * args.sessions} sessions), "
            f"{args.seconds:g} s of speech-like audio each, chunk k of every session sent at the same tick "
            f"(live-microphone schedule, chunk {CHUNK_MS} ms); clients on the same machine. Definitions in "
            "`bench/realtime.py`."
        )
        cmd = f"python bench/realtime.py {' '.join(sys.argv[1:])}".strip()
        write_result("realtime", "Realtime", table, f"{setup}\n\n{notes}", cmd=cmd)


if __name__ == "__main__":
    main()
