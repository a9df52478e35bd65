"""Stopping under load is quiet: ``duplex up`` stopped by SIGTERM while gRPC and Realtime conversations are live
drains, ends them with a status, and its log (engines, picker, Envoy) holds no traceback — before the fix
grpc logged ``Exception not handled by _handle_exceptions`` with a ``CancelledError`` per live stream."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc

from duplex.loadtest.local import LocalUp
from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .conftest import tone

GRPC_SESSIONS = 3
NOISE = re.compile(r"Traceback|CancelledError|Exception not handled|never retrieved|Task was destroyed")


async def realtime_session(url: str, started: asyncio.Event) -> int | None:
    """Stream 24 kHz silence in 100 ms pieces until the server closes; the close code."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        piece = base64.b64encode(bytes(4800)).decode()

        async def send() -> None:
            while not ws.closed:
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
                await asyncio.sleep(0.1)  # a microphone's pace, not a wait for the server

        sender = asyncio.create_task(send())
        try:
            async for msg in ws:
                if (
                    msg.type == aiohttp.WSMsgType.TEXT
                    and json.loads(msg.data)["type"] == "input_audio_buffer.speech_started"
                ):
                    started.set()
        finally:
            sender.cancel()
        return ws.close_code


def test_sigterm_under_live_sessions_logs_no_traceback(tmp_path: Path) -> None:
    with LocalUp(tmp_path / "up.log", ["--http-port", "0", "--no-agent"]) as up:
        addr, ws_url = up.address, up.realtime

        async def run() -> tuple[list[object], object, int]:
            started = asyncio.Event()
            rt = asyncio.create_task(realtime_session(ws_url, started))
            answered = [asyncio.Event() for _ in range(GRPC_SESSIONS)]

            def on_event(i: int) -> Callable[[pb.ServerEvent], None]:
                def seen(event: pb.ServerEvent) -> None:
                    if event.HasField("audio") and event.audio.seq >= 1:
                        answered[i].set()  # in steady state: a second chunk answered

                return seen

            async with grpc.aio.insecure_channel(addr) as ch:
                chunks = client.split_chunks(tone(60.0), 3200)
                calls = [
                    asyncio.create_task(client.converse(ch, chunks, realtime=True, on_event=on_event(i)))
                    for i in range(GRPC_SESSIONS)
                ]
                await asyncio.wait_for(started.wait(), 60)
                await asyncio.wait_for(asyncio.gather(*(a.wait() for a in answered)), 120)
                # SIGTERM now; the stop waits (in a thread) while the conversations end
                stopping = asyncio.create_task(asyncio.to_thread(up.stop, signal.SIGTERM, 60.0))
                results = await asyncio.gather(*calls, return_exceptions=True)
            return list(results), await asyncio.wait_for(rt, 60), await stopping

        results, rt_close, code = asyncio.run(run())
        assert code == 0
    log = up.output()
    assert "duplex up: stopped" in log, log[-3000:]
    assert not NOISE.search(log), log[-4000:]
    codes = [getattr(r, "code", r) for r in results]
    assert all(c == grpc.StatusCode.UNAVAILABLE for c in codes), codes  # a status the client can act on
    assert rt_close == 1001, rt_close  # going away
