"""The official ``openai`` SDK, unmodified, holds conversations with the Realtime endpoint of a real engine
(reached as Envoy reaches it): the audio of a spoken question goes in at live-microphone pace, the model's
turn comes back as GA events (every one validated against the SDK's own types)."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
from openai import AsyncOpenAI

from .conftest import API_KEY, MAX_FRAME, RealtimeStack, Received, collect, rms, stream_live

SILENCE_RMS = 30.0
"""PCM16 RMS of audio with sound in it (model speech is hundreds and more; digital silence is 0)."""


def client(rt: RealtimeStack, key: str = API_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, websocket_base_url=rt.ws_base, base_url=rt.http_base)


def no_errors(got: Received) -> None:
    assert not got.of("error"), got.of("error")


async def test_conversation_from_a_wav(rt: RealtimeStack, speech24: np.ndarray) -> None:
    got = Received()
    async with client(rt).realtime.connect(model="duplex") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await conn.session.update(session={"type": "realtime", "instructions": "Answer briefly."})
        await stream_live(conn, speech24)
        await got.wait(lambda g: g.of("response.done") and g.of("input_audio_buffer.speech_stopped"))
        await conn.close()
        await reader
    types = got.types()
    assert types[0] == "session.created"
    assert got.of("session.updated")[0]["session"]["instructions"] == "Answer briefly."
    assert got.of("session.created")[0]["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    no_errors(got)
    started, stopped = got.of("input_audio_buffer.speech_started"), got.of("input_audio_buffer.speech_stopped")
    assert started[0]["audio_start_ms"] == 0 and stopped
    assert stopped[0]["item_id"] == started[0]["item_id"]
    assert stopped[0]["audio_end_ms"] > 0
    # the user's turn ends before the model's response starts, and every response is closed in order
    assert types.index("input_audio_buffer.speech_stopped") < types.index("response.created")
    done = got.of("response.done")[0]["response"]
    created = got.of("response.created")[0]["response"]
    assert done["id"] == created["id"] and done["status"] in ("completed", "cancelled")
    deltas = [e for e in got.of("response.output_audio.delta") if e["response_id"] == done["id"]]
    assert deltas and rms([e["delta"] for e in deltas]) > SILENCE_RMS
    assert got.of("response.output_audio_transcript.delta")
    transcript = "".join(
        e["delta"] for e in got.of("response.output_audio_transcript.delta") if e["response_id"] == done["id"]
    )
    assert done["output"][0]["content"][0]["transcript"] == transcript
    # 24 kHz PCM16 on the wire: whole samples, and the audio covers what the response says it sent
    sent = sum(len(base64.b64decode(e["delta"])) for e in deltas)
    assert sent % 2 == 0 and int(done["metadata"]["audio_ms"]) == sent * 1000 // (2 * 24000)


async def bad_then_check(rt: RealtimeStack, send: object, check: object) -> Received:
    got = Received()
    async with client(rt).realtime.connect(model="duplex") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await got.wait(lambda g: g.of("session.created"))
        await send(conn)  # type: ignore[operator]
        await got.wait(check)  # type: ignore[arg-type]
        await conn.close()
        await reader
    return got


async def witness_session(rt: RealtimeStack, speech: np.ndarray, witness: Received) -> None:
    """A conversation over the official SDK beside the bad ones, collected into ``witness`` until its first
    ``response.done``."""
    async with client(rt).realtime.connect(model="duplex") as conn:
        reader = asyncio.create_task(collect(conn, witness))
        await stream_live(conn, speech)
        await witness.wait(lambda g: g.of("response.done"))
        await conn.close()
        await reader


async def test_bad_input_gets_errors_and_harms_no_witness(rt: RealtimeStack, speech24: np.ndarray) -> None:
    witness = Received()
    w = asyncio.create_task(witness_session(rt, speech24, witness))
    await witness.wait(lambda g: g.of("response.output_audio.delta") or g.of("input_audio_buffer.speech_started"))

    def error_then_alive(g: Received) -> bool:
        return bool(g.of("error")) and bool(g.of("session.updated"))

    async def unknown_type(conn: object) -> None:
        await conn.send_raw(json.dumps({"type": "conversation.item.retrieve", "item_id": "x"}))  # type: ignore[attr-defined]
        await conn.session.update(session={"type": "realtime"})  # type: ignore[attr-defined]

    got = await bad_then_check(rt, unknown_type, error_then_alive)
    err = got.of("error")[0]["error"]
    assert err["code"] == "unknown_event" and "conversation.item.retrieve" in err["message"] and err["param"] == "type"

    async def bad_json(conn: object) -> None:
        await conn.send_raw("{not json")  # type: ignore[attr-defined]
        await conn.session.update(session={"type": "realtime"})  # type: ignore[attr-defined]

    got = await bad_then_check(rt, bad_json, error_then_alive)
    assert got.of("error")[0]["error"]["code"] == "invalid_json"

    for fmt, rate_note in (({"type": "audio/pcmu"}, "audio/pcmu"), ({"type": "audio/pcm", "rate": 16000}, "16000")):

        async def wrong_format(conn: object, fmt: dict[str, object] = fmt) -> None:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"format": fmt}}})  # type: ignore[attr-defined]
            await conn.session.update(session={"type": "realtime"})  # type: ignore[attr-defined]

        got = await bad_then_check(rt, wrong_format, error_then_alive)
        err = got.of("error")[0]["error"]
        assert err["param"] == "session.audio.input.format" and rate_note in err["message"], err

    async def bad_audio(conn: object) -> None:
        await conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": "***"}))  # type: ignore[attr-defined]
        await conn.session.update(session={"type": "realtime"})  # type: ignore[attr-defined]

    got = await bad_then_check(rt, bad_audio, error_then_alive)
    assert got.of("error")[0]["error"]["param"] == "audio"

    async def oversized(conn: object) -> None:
        await conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (MAX_FRAME + 4)}))  # type: ignore[attr-defined]

    got = await bad_then_check(rt, oversized, lambda g: g.close_code is not None)
    assert got.close_code == 1009

    await asyncio.wait_for(w, 60)
    no_errors(witness)
    assert witness.close_code in (None, 1000)
    assert rms([e["delta"] for e in witness.of("response.output_audio.delta")]) > SILENCE_RMS


async def test_client_function_call_runs_as_an_agent_job(rt: RealtimeStack) -> None:
    """A client ``function_call`` item becomes an AgentRequest; its result comes back as a
    ``function_call_output`` item (this engine has no agent configured, so the job FAILS, saying so)."""
    got = Received()
    async with client(rt).realtime.connect(model="duplex") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await conn.session.update(session={"type": "realtime", "tools": [{"type": "function", "name": "clock"}]})
        await conn.conversation.item.create(
            item={"type": "function_call", "call_id": "c1", "name": "clock", "arguments": "{}"}
        )
        await got.wait(
            lambda g: any(e["item"]["type"] == "function_call_output" for e in g.of("conversation.item.done"))
        )
        # once the conversation runs, its tools are fixed: a change is refused, naming the field
        await conn.session.update(session={"type": "realtime", "tools": []})
        await got.wait(lambda g: g.of("error"))
        await conn.close()
        await reader
    out = next(e["item"] for e in got.of("conversation.item.done") if e["item"]["type"] == "function_call_output")
    assert out["call_id"] == "c1" and "no background agent" in json.loads(out["output"])["error"]
    # its FAILED carried its arguments (the call's first event), yet it is the client's call: not announced back
    assert not got.of("response.function_call_arguments.done")
    assert got.of("error")[0]["error"]["param"] == "session.tools"
