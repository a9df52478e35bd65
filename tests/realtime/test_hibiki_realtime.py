"""Hibiki over the Realtime WebSocket: ``input_audio_buffer.commit`` ends the input, as ``EndOfStream`` does on
gRPC. The client then hears the translation's tail — the engine feeds the model silence until its output is
over — as one response that completes, and the socket closes normally. Greedy and batch-invariant, the tail's
audio and transcript equal what a gRPC client gets for the same input from the same engine."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from moshi_fixtures import FRAME, varied_audio  # first: sets NO_TORCH_COMPILE before moshi is imported
from websockets.exceptions import ConnectionClosed

from duplex.model.moshi.checkpoint import load_checkpoint
from duplex.model.moshi.hibiki import HibikiServed
from duplex.model.moshi.tiny import init_checkpoint
from duplex.model.spec import ModelSource
from duplex.serving import client as grpc_client

from .conftest import RealtimeStack, Received, collect, start_realtime, stop_realtime, stream_live
from .test_sdk import client

CFG, TAIL = 3.0, 6
"""Guidance, and the tail cap in frames (the tiny model rarely pads its text: the cap ends its tail)."""
WHOLE, EXTRA = 10, 1000
"""The input: 10 whole 80 ms chunks and 1000 samples more, which the commit completes with silence."""


@pytest.fixture(scope="module")
def rt_hibiki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealtimeStack]:
    directory: Path = init_checkpoint("hibiki", tmp_path_factory.mktemp("ckpt") / "hibiki", seed=4)
    served = HibikiServed(load_checkpoint(directory), cfg_coef=CFG, tail_max_frames=TAIL, tail_hangover_frames=100)
    source = ModelSource(uri=str(directory), cfg_coef=CFG)
    stack = start_realtime(source, served, chunk_ms=80, cohorts=1, batch_invariant=True)
    yield stack
    stop_realtime(stack)


def speech() -> np.ndarray:
    audio = varied_audio(1, WHOLE + 1, seed=21)[0][: WHOLE * FRAME + EXTRA]
    return (audio * 32767.0).round().to(torch.int16).numpy()


def by_chunk(events: list[dict[str, Any]]) -> dict[int, tuple[bytes, str]]:
    """Per ``duplex.chunk`` seq, the wire audio and transcript that follow it (the engine sends a chunk's audio,
    then its text)."""
    out: dict[int, tuple[bytes, str]] = {}
    seq: int | None = None
    for e in events:
        if e["type"] == "duplex.chunk":
            seq = e["seq"]
            out[seq] = (b"", "")
        elif seq is not None and e["type"] == "response.output_audio.delta":
            out[seq] = (out[seq][0] + base64.b64decode(e["delta"]), out[seq][1])
        elif seq is not None and e["type"] == "response.output_audio_transcript.delta":
            out[seq] = (out[seq][0], out[seq][1] + e["delta"])
    return out


Reference = tuple[dict[int, bytes], dict[int, str]]
"""Per chunk seq of a gRPC session: its audio (PCM16 bytes) and its text."""


async def grpc_reference(stack: RealtimeStack, pcm: np.ndarray) -> Reference:
    """The same input over gRPC to the same engine, the last chunk completed with silence, then EndOfStream."""
    chunks = -(-len(pcm) // FRAME)
    async with grpc_client.channel(f"127.0.0.1:{stack.engine.port}", None) as ch:
        reference = await grpc_client.converse(
            ch,
            grpc_client.split_chunks(pcm, FRAME),
            chunk_ms=80,
            start=grpc_client.start_event(sample_rate=24000, chunk_ms=80),
        )
    assert reference.code == grpc.StatusCode.OK, reference.details
    audio = {r.event.audio.seq: r.event.audio.pcm or bytes(2 * FRAME) for r in reference.of("audio")}
    assert sorted(audio) == list(range(chunks + TAIL))
    text: dict[int, str] = {}
    for r in reference.of("text"):
        text[r.event.text.seq] = text.get(r.event.text.seq, "") + r.event.text.text
    return audio, text


def check_tail(got: Received, reference: Reference, chunks: int) -> None:
    """After the commit: every chunk answered, then the tail as one completed response equal, chunk for chunk, to
    the gRPC session's tail; the socket closed normally."""
    assert got.close_code == 1000
    types = got.types()
    seqs = [e["seq"] for e in got.of("duplex.chunk")]
    assert seqs == list(range(chunks + TAIL)), "every chunk answered once, then the tail, then the end"
    committed = types.index("input_audio_buffer.committed")
    tail_at = [i for i, e in enumerate(got.events) if e["type"] == "duplex.chunk" and e["seq"] >= chunks]
    assert all(i > committed for i in tail_at), "the tail comes after the commit"
    done = got.of("response.done")[-1]["response"]
    assert types[-1] == "response.done" and done["status"] == "completed"
    deltas_after = [e for e in got.events[tail_at[0] :] if e["type"].startswith("response.output_audio")]
    assert {e["response_id"] for e in deltas_after} == {done["id"]}
    ref_audio, ref_text = reference
    wire = by_chunk(got.events)
    for seq in range(chunks, chunks + TAIL):
        audio, text = wire[seq]
        assert audio == ref_audio[seq], f"tail chunk {seq}: audio differs from the gRPC session's"
        assert text == ref_text.get(seq, ""), f"tail chunk {seq}: transcript differs from the gRPC session's"
    assert any(np.abs(np.frombuffer(wire[s][0], "<i2")).max() > 0 for s in range(chunks, chunks + TAIL))
    tail_text = "".join(wire[s][1] for s in range(chunks, chunks + TAIL))
    assert done["output"][0]["content"][0]["transcript"].endswith(tail_text)


async def test_commit_gives_the_tail_as_grpc_does(rt_hibiki: RealtimeStack) -> None:
    """Audio streamed live, the last piece short of a chunk, then the commit (and audio after it, refused)."""
    pcm = speech()
    reference = await grpc_reference(rt_hibiki, pcm)
    got = Received()
    async with client(rt_hibiki).realtime.connect(model="hibiki", extra_query={"duplex_events": "1"}) as conn:
        reader = asyncio.create_task(collect(conn, got, extensions=True))
        await stream_live(conn, pcm[: WHOLE * FRAME], piece_ms=100)
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[WHOLE * FRAME :].tobytes()).decode())
        await conn.input_audio_buffer.commit()
        with contextlib.suppress(ConnectionClosed):  # the tail is TAIL chunks of real time: the socket is open
            await conn.input_audio_buffer.append(audio=base64.b64encode(bytes(3840)).decode())
        await got.wait(lambda g: g.close_code is not None, deadline_s=120)
        await reader
    errors = got.of("error")
    assert [e["error"]["code"] for e in errors] == ["input_ended"], errors
    assert "input_audio_buffer.append: the input ended" in errors[0]["error"]["message"]
    check_tail(got, reference, WHOLE + 1)


async def test_audio_and_commit_sent_at_once_give_the_same_tail(rt_hibiki: RealtimeStack) -> None:
    """The whole input in one append and the commit right after it: both may reach the endpoint before the
    engine's SessionReady (the audio is then held, and the end of the input follows it once it is handed over);
    the outcome is the same."""
    pcm = speech()
    reference = await grpc_reference(rt_hibiki, pcm)
    got = Received()
    async with client(rt_hibiki).realtime.connect(model="hibiki", extra_query={"duplex_events": "1"}) as conn:
        reader = asyncio.create_task(collect(conn, got, extensions=True))
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm.tobytes()).decode())
        await conn.input_audio_buffer.commit()
        await got.wait(lambda g: g.close_code is not None, deadline_s=120)
        await reader
    assert not got.of("error"), got.of("error")
    check_tail(got, reference, WHOLE + 1)


async def test_commit_before_any_audio_names_what_is_wrong(rt_hibiki: RealtimeStack) -> None:
    got = Received()
    async with client(rt_hibiki).realtime.connect(model="hibiki") as conn:
        reader = asyncio.create_task(collect(conn, got, extensions=True))
        await conn.input_audio_buffer.commit()
        await got.wait(lambda g: g.of("error"))
        await conn.close()
        await reader
    error = got.of("error")[0]["error"]
    assert error["code"] == "input_audio_buffer_commit_empty"
    assert error["message"].startswith("input_audio_buffer.commit: no audio was appended")
