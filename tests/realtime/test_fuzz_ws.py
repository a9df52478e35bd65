"""Fuzzed frames over a real WebSocket: several sessions send a few hundred mutated, random, binary and
oversized frames to the Realtime endpoint of a real gateway and engine while a witness holds a conversation
with the official SDK. Every frame the decoder refuses gets an ``error`` event naming it (or the socket closes
1008/1009), the server stays up, and the witness's conversation goes on untouched."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from fuzz.test_realtime_events import paths, valid_events
from serving.helpers import eventually

from duplex.serving.realtime.events import decode_client_event
from duplex.serving.realtime.protocol import ClientError

from .conftest import API_KEY, MAX_FRAME, RealtimeStack, Received, collect, rms
from .test_sdk import SILENCE_RMS, client, no_errors, witness_session

SESSIONS = 6
FRAMES_PER_SESSION = 50
ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    1e308,
    "",
    "\ud800",
    [],
    {},
    "x" * 5000,
    {"a": [1, {"b": None}]},
    "m1",
    "QUFB" * 10,
    "***",
    {"type": "audio/pcmu"},
    {"type": "audio/pcm", "rate": 16000},
]


def fuzzed_frame(rng: random.Random, i: int) -> tuple[str | bytes, str | None]:
    """A frame: mostly a valid event with fields replaced, deleted or added (tagged with event_id ``f{i}``),
    sometimes text that is not an event, or a binary frame."""
    roll = rng.random()
    if roll < 0.1:
        return rng.choice(["{not json", "[" * 3000, "null", '"text"', "{}", '{"type": 7}', "\x00\xff"]), None
    if roll < 0.15:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), None
    event = copy.deepcopy(rng.choice(valid_events()))
    for _ in range(rng.randint(1, 3)):
        where = rng.choice(paths(event)[1:])
        parent: Any = event
        for step in where[:-1]:
            parent = parent[step]
        if rng.random() < 0.3:
            del parent[where[-1]]
        else:
            parent[where[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
        if "type" not in event:
            break
    _drop_voice(event)
    event["event_id"] = f"f{i}"
    return json.dumps(event), f"f{i}"


def _drop_voice(event: dict[str, Any]) -> None:
    """No fuzzed voice: the endpoint hands it to the engine, which refuses one the model does not have and ends
    the conversation (tests/realtime/test_voice_settings.py), racing the frames still being sent."""
    node: Any = event
    for key in ("session", "audio", "output"):
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop("voice", None)


def refused(frame: str | bytes) -> bool:
    """Whether the endpoint's decoder refuses the frame (a binary frame is always refused)."""
    if isinstance(frame, bytes):
        return True
    try:
        decode_client_event(frame)
    except ClientError:
        return True
    return False


def refused_start(error: dict[str, Any]) -> bool:
    """The engine's refusal of a conversation's SessionStart (an ``error`` naming a ``start.`` field)."""
    return error["code"] == "invalid_argument" and "start." in error["message"]


@dataclass
class FuzzResult:
    sent: list[tuple[str | bytes, str | None]] = field(default_factory=list)
    """Each frame with its event_id (None: not an event object)."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None


async def fuzz_session(http: aiohttp.ClientSession, rt: RealtimeStack, seed: int, oversized: bool) -> FuzzResult:
    """Send the fuzzed frames, then a sentinel (an unknown event ``end``); read until its error or the close."""
    rng = random.Random(seed)
    out = FuzzResult()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.ws_connect(f"{rt.ws_base}/realtime", headers=headers, max_msg_size=0) as ws:
        try:
            for i in range(FRAMES_PER_SESSION):
                frame, event_id = fuzzed_frame(rng, seed * 1000 + i)
                out.sent.append((frame, event_id))
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            await ws.send_str(json.dumps({"type": "sentinel.end", "event_id": "end"}))
        except ConnectionResetError:  # the engine refused the conversation's start and closed (checked below)
            pass
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            event = json.loads(msg.data)
            if event["type"] == "error":
                out.errors.append(event["error"])
                if event["error"]["event_id"] == "end":
                    break
        if oversized and not ws.closed:  # after every answer is in: the server stops reading here
            await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (MAX_FRAME + 4)}))
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
        out.close_code = ws.close_code
    return out


async def test_fuzzed_frames_get_errors_and_harm_no_witness(rt: RealtimeStack, speech24: np.ndarray) -> None:
    witness = Received()

    registry = rt.engine.metrics.registry

    def refused_frames() -> float:
        value = registry.get_sample_value("duplex_engine_realtime_errors_total", {"code": "invalid_frame"})
        return value or 0.0

    frames_refused_before = refused_frames()
    w = asyncio.create_task(witness_session(rt, speech24, witness))
    await witness.wait(lambda g: g.of("input_audio_buffer.speech_started"))
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(fuzz_session(http, rt, s, oversized=s % 2 == 1) for s in range(SESSIONS)))
    frames = 0
    for seed, r in enumerate(results):
        frames += len(r.sent)
        want_ids = {eid for f, eid in r.sent if eid is not None and refused(f)}
        untagged_refused = sum(1 for f, eid in r.sent if eid is None and refused(f))
        got_ids = [e["event_id"] for e in r.errors]
        if r.close_code == 1008 and r.errors and refused_start(r.errors[-1]):
            # a fuzzed setting only the engine checks (a voice the model's family does not take) made the engine
            # refuse the conversation's start: its error and 1008 may come before the later frames' answers,
            # which still come in order
            sent_order = [eid for _, eid in r.sent if eid is not None]
            answered = [eid for eid in got_ids if eid is not None]
            assert answered == [eid for eid in sent_order if eid in set(answered)], answered
            continue
        # frames are handled in order: the sentinel's error comes after the answer to every fuzzed frame
        assert got_ids and got_ids[-1] == "end", (r.close_code, r.errors[-3:])
        if seed % 2:
            # 1009, or 1006 when the client's unread frame made the server's close a TCP reset (the server's
            # side is counted below)
            assert r.close_code in (1009, 1006), r.close_code
        else:
            assert r.close_code in (None, 1000), r.close_code
        missing = sorted(want_ids - set(got_ids))
        assert not missing, f"session {seed}: refused frames without an error event: {missing[:5]}"
        assert got_ids.count(None) >= untagged_refused, (got_ids.count(None), untagged_refused)
    assert frames >= 300
    ran = [(seed, r) for seed, r in enumerate(results) if not (r.close_code == 1008 and refused_start(r.errors[-1]))]
    counted = sum(isinstance(f, bytes) for _, r in ran for f, _ in r.sent) + sum(seed % 2 for seed, _ in ran)
    cut_short = sum(isinstance(f, bytes) for r in results for f, _ in r.sent) + SESSIONS // 2 - counted
    # the server counts the binary and oversized frames (the oversized ones as it closes: a client can see the
    # close first); of a session the engine refused, those it read before the close
    low, high = frames_refused_before + counted, frames_refused_before + counted + cut_short
    await eventually(lambda: low <= refused_frames() <= high, what="frames counted")
    await asyncio.wait_for(w, 60)
    no_errors(witness)
    assert witness.close_code in (None, 1000)
    assert rms([e["delta"] for e in witness.of("response.output_audio.delta")]) > SILENCE_RMS
    # the server is still up: a new conversation is accepted
    got = Received()
    async with client(rt).realtime.connect(model="duplex") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await conn.session.update(session={"type": "realtime"})
        await got.wait(lambda g: g.of("session.updated"))
        await conn.close()
        await reader
