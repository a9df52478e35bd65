"""Stopping under load is quiet: ``duplex up`` stopped by SIGTERM while gRPC and Realtime conversations are live
drains, ends them with a status, and its log (engine, gateway process) holds no traceback — before the fix
grpc logged ``Exception not handled by _handle_exceptions`` with a ``CancelledError`` per live stream."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc

from duplex.serving import client
from duplex.serving.gateway.pump import ClientPump

from .conftest import tone
from .test_cli import DUPLEX

GRPC_SESSIONS = 3
NOISE = re.compile(r"Traceback|CancelledError|Exception not handled|never retrieved|Task was destroyed")


class Logged:
    """A subprocess with stdout and stderr merged into one log, read by a thread; tests wait for lines."""

    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen([*DUPLEX, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern: str, count: int = 1, deadline_s: float = 120.0) -> list[re.Match[str]]:
        end = time.monotonic() + deadline_s
        with self._cond:
            while True:
                found = [m for line in self.lines if (m := re.search(pattern, line))]
                if len(found) >= count:
                    return found
                left = end - time.monotonic()
                if left <= 0 or self.p.poll() is not None:
                    raise AssertionError(f"{count}× {pattern!r} not seen; log:\n{''.join(self.lines)[-3000:]}")
                self._cond.wait(left)

    def log(self) -> str:
        """The whole log, once the process has exited and its output is read to the end."""
        self._reader.join(timeout=30)
        return "".join(self.lines)


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


def test_sigterm_under_live_sessions_logs_no_traceback() -> None:
    up = Logged(["up", "--port", "0", "--http-port", "0", "--no-agent"])
    try:
        addr = up.wait_for(r"ready at (\S+)")[0].group(1)
        ws_url = up.wait_for(r"realtime at (\S+)")[0].group(1)

        async def run() -> tuple[list[object], object]:
            started = asyncio.Event()
            rt = asyncio.create_task(realtime_session(ws_url, started))
            async with grpc.aio.insecure_channel(addr) as ch:
                calls = [
                    asyncio.create_task(client.converse(ch, client.split_chunks(tone(60.0), 3200), realtime=True))
                    for _ in range(GRPC_SESSIONS)
                ]
                await asyncio.wait_for(started.wait(), 60)
                await asyncio.to_thread(up.wait_for, r"session started", GRPC_SESSIONS + 1)
                up.p.send_signal(signal.SIGTERM)
                results = await asyncio.gather(*calls, return_exceptions=True)
            return list(results), await asyncio.wait_for(rt, 60)

        results, rt_close = asyncio.run(run())
        assert up.p.wait(timeout=60) == 0
    finally:
        if up.p.poll() is None:
            up.p.kill()
            up.p.wait()
    log = up.log()
    assert "gateway draining: " in log and "duplex up: stopped" in log, log[-3000:]
    assert not NOISE.search(log), log[-4000:]
    codes = [getattr(r, "code", r) for r in results]
    assert all(c == grpc.StatusCode.UNAVAILABLE for c in codes), codes  # a status the client can act on
    assert rt_close == 1001, rt_close  # going away


async def test_pump_closed_with_a_full_queue_ends_cancelled() -> None:
    """A relay that ends while its client keeps writing closes the pump with the queue full: the pump's task
    must end (cancelled), not wait forever for room for its end mark."""

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"chunk"

    pump = ClientPump(b"start", endless(), depth=2)
    deadline = asyncio.get_running_loop().time() + 10
    while not pump.queue.full():  # the pump fills the queue as fast as the loop runs it
        assert asyncio.get_running_loop().time() < deadline, "the pump never filled its queue"
        await asyncio.sleep(0)
    pump.close()
    done, _ = await asyncio.wait({pump.task}, timeout=10)
    assert pump.task in done and pump.task.cancelled()
