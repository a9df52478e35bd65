"""The Realtime WebSocket in front of a Moshi-family engine: the official SDK talks to it unchanged; the
model's Mimi audio arrives as audio deltas at the wire's 24 kHz (the model's own rate: nothing is resampled),
its inner-monologue text as transcript deltas, and what the family cannot take is refused with an ``error``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
from moshi_fixtures import write_checkpoint  # first: sets NO_TORCH_COMPILE before moshi is imported
from websockets.exceptions import ConnectionClosed

from duplex.model.spec import ModelSource

from .conftest import RealtimeStack, Received, collect, rms, start_realtime, stop_realtime, stream_live
from .test_sdk import SILENCE_RMS, client, no_errors


@pytest.fixture(scope="module")
def rt_moshi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealtimeStack]:
    directory = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-moshi", seed=2)
    stack = start_realtime(ModelSource(uri=str(directory), temperature=0.0), chunk_ms=80, cohorts=1)
    yield stack
    stop_realtime(stack)


async def test_a_moshi_conversation_over_the_official_sdk(rt_moshi: RealtimeStack, speech24: np.ndarray) -> None:
    """The model's turn (a random model talks on) streams as one response's audio and transcript deltas."""
    got = Received()

    def talking(g: Received) -> bool:
        return len(g.of("response.output_audio.delta")) >= 10 and bool(g.of("response.output_audio_transcript.delta"))

    async with client(rt_moshi).realtime.connect(model="tiny-moshi") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await stream_live(conn, speech24[: 24000 * 2])
        await got.wait(talking)
        await conn.close()
        await reader
    no_errors(got)
    assert got.of("session.created")[0]["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    response = got.of("response.created")[0]["response"]["id"]
    deltas = got.of("response.output_audio.delta")
    assert {e["response_id"] for e in deltas} == {response}
    assert rms([e["delta"] for e in deltas]) > SILENCE_RMS
    assert all(len(base64.b64decode(e["delta"])) % 2 == 0 for e in deltas)
    transcript = "".join(e["delta"] for e in got.of("response.output_audio_transcript.delta"))
    assert transcript.strip()


async def test_instructions_are_refused_with_an_error_event(rt_moshi: RealtimeStack, speech24: np.ndarray) -> None:
    got = Received()
    async with client(rt_moshi).realtime.connect(model="tiny-moshi") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await conn.session.update(session={"type": "realtime", "instructions": "Answer briefly."})
        with contextlib.suppress(ConnectionClosed):  # the refusal may close the socket while audio still goes out
            await stream_live(conn, speech24[:4800])
        await got.wait(lambda g: g.of("error"))
        await conn.close()
        await reader
    message = got.of("error")[0]["error"]["message"]
    assert "instructions" in message and "takes no typed text" in message


async def test_a_personaplex_voice_is_forwarded_and_moshi_refuses_it(
    rt_moshi: RealtimeStack, speech24: np.ndarray
) -> None:
    """``audio.output.voice`` other than OpenAI's names is the session's PersonaPlex voice (``SessionStart.voice``):
    plain Moshi refuses it with an ``error`` naming the field; an OpenAI voice name is accepted and ignored."""
    got = Received()
    async with client(rt_moshi).realtime.connect(model="tiny-moshi") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "NATF2"}}})
        with contextlib.suppress(ConnectionClosed):  # the refusal may close the socket while audio still goes out
            await stream_live(conn, speech24[:4800])
        await got.wait(lambda g: g.of("error"))
        await conn.close()
        await reader
    assert got.of("session.updated")[0]["session"]["audio"]["output"]["voice"] == "NATF2"
    message = got.of("error")[0]["error"]["message"]
    assert "start.voice 'NATF2': the moshi family takes no voice" in message
    ok = Received()
    async with client(rt_moshi).realtime.connect(model="tiny-moshi") as conn:
        reader = asyncio.create_task(collect(conn, ok))
        await conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "alloy"}}})
        await stream_live(conn, speech24[: 24000 // 2])
        await ok.wait(lambda g: len(g.of("response.output_audio.delta")) >= 2)
        await conn.close()
        await reader
    no_errors(ok)


async def test_commit_changes_nothing_for_a_model_without_a_tail(rt_moshi: RealtimeStack, speech24: np.ndarray) -> None:
    """Moshi takes turns itself and has no end-of-input tail: ``input_audio_buffer.commit`` is accepted and
    ignored — no ``committed`` answer of its own, no error, and the conversation goes on taking audio."""
    got = Received()
    async with client(rt_moshi).realtime.connect(model="tiny-moshi") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await stream_live(conn, speech24[: 24000 // 2])
        await conn.input_audio_buffer.commit()
        await stream_live(conn, speech24[24000 // 2 : 24000])
        await got.wait(lambda g: len(g.of("response.output_audio.delta")) >= 10)
        assert got.close_code is None, "the conversation went on after the commit"
        await conn.close()
        await reader
    no_errors(got)
    # the only commits are the model's own: one per turn it took (its speech_stopped, same item)
    stopped = [e["item_id"] for e in got.of("input_audio_buffer.speech_stopped")]
    assert [e["item_id"] for e in got.of("input_audio_buffer.committed")] == stopped


async def test_session_temperature_is_the_sessions_own_sampling(rt_moshi: RealtimeStack, speech24: np.ndarray) -> None:
    """``session.temperature`` reaches the engine as ``SessionStart.temperature``: the session's slot samples at
    it while the greedy engine's other slots stay greedy."""
    from duplex.model.moshi.sampling import RowSampling

    got = Received()
    served = rt_moshi.engine.served
    state = rt_moshi.engine.scheduler.executor.state
    async with client(rt_moshi).realtime.connect(model="tiny-moshi") as conn:
        reader = asyncio.create_task(collect(conn, got))
        await conn.session.update(session={"type": "realtime", "temperature": 1.5})
        await stream_live(conn, speech24[: 24000 // 2])
        await got.wait(lambda g: len(g.of("response.output_audio.delta")) >= 2)
        own = [s for s in state.sampling if s != served.default_sampling]
        await conn.close()
        await reader
    no_errors(got)
    assert served.default_sampling.temperature == 0.0
    assert own == [RowSampling(1.5, served.default_sampling.top_k)]
