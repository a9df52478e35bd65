"""The Moshi family through the engine: a checkpoint directory in Kyutai's layout, served by the same path as
``duplex up --checkpoint DIR`` (``load_served``), talked to over real gRPC in 24 kHz, 80 ms chunks; a session
that others join and leave around equals upstream's greedy ``LMGen`` run alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from moshi.models import loaders
from moshi_fixtures import FRAME, LMGen, varied_audio, write_checkpoint  # first: sets NO_TORCH_COMPILE

from duplex.model.moshi.served import MoshiTextDecoder
from duplex.model.spec import ModelSource
from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .helpers import Served, served_engine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "upstream-tiny", seed=5)
    with served_engine(ModelSource(uri=str(directory), temperature=0.0), max_sessions=4) as served:
        yield served


def pcm_chunks(audio: torch.Tensor) -> list[bytes]:
    pcm = (audio * 32767.0).round().to(torch.int16).numpy()
    return client.split_chunks(pcm, FRAME)


def upstream_alone(directory: Path, audio: torch.Tensor) -> tuple[list[list[int]], list[np.ndarray]]:
    """Per frame: the text tokens and PCM16 audio of upstream's own greedy streaming loop over the same checkpoint
    files, loaded with upstream's loader only."""
    import json

    config = json.loads((directory / "config.json").read_text())
    info = loaders.CheckpointInfo.from_hf_repo(
        "local",
        moshi_weights=directory / config["moshi_name"],
        mimi_weights=directory / config["mimi_name"],
        tokenizer=directory / config["tokenizer_name"],
        config_path=directory / "config.json",
        mimi_config_path=directory / config["mimi_config_name"],
    )
    mimi, lm = info.get_mimi(device="cpu"), info.get_moshi(device="cpu", dtype=torch.float32)
    gen = LMGen(lm, use_sampling=False, support_out_of_sync=True)
    text: list[list[int]] = []
    wave: list[np.ndarray] = []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for f in range(len(audio) // FRAME):
            codes = mimi.encode(audio[None, None, f * FRAME : (f + 1) * FRAME])
            tokens = gen.step(codes)
            text.append([int(tokens[0, 0, 0])] if tokens[0, 0, 0] >= 0 else [])
            out = mimi.decode(tokens[:, 1:])[0, 0] if (tokens[:, 1:] >= 0).all() else torch.zeros(FRAME)
            wave.append((out * 32767.0).round().to(torch.int16).numpy())
    return text, wave


def by_seq(conv: client.Conversation, kind: str) -> dict[int, pb.ServerEvent]:
    return {getattr(r.event, kind).seq: r.event for r in conv.of(kind)}


def test_a_new_user_talks_to_a_moshi_checkpoint_at_its_native_rate(served: Served) -> None:
    audio = varied_audio(1, 20, seed=3)[0]

    async def talk() -> client.Conversation:
        async with client.channel(served.addr, None) as ch:
            return await client.converse(
                ch, lambda ready: pcm_chunks(audio), start=client.start_event(sample_rate=0), realtime=False
            )

    conv = served.thread.run(talk())
    assert conv.code == grpc.StatusCode.OK, conv.details
    ready = conv.of("ready")[0].event.ready
    assert ready.input_format.sample_rate == ready.output_format.sample_rate == 24000
    assert (ready.chunk_ms, ready.chunk_samples, ready.model) == (80, FRAME, "upstream-tiny")
    audio_events = conv.of("audio")
    assert [r.event.audio.seq for r in audio_events] == list(range(20))
    assert all(len(r.event.audio.pcm) in (0, 2 * FRAME) for r in audio_events)
    assert sum(bool(r.event.audio.pcm) for r in audio_events) >= 15  # the model speaks (tokens after the delays)
    assert "".join(r.event.text.text for r in conv.of("text")).strip()  # the inner monologue as text


def test_typed_text_and_wrong_rate_are_refused_clearly(served: Served) -> None:
    async def attempt(start: pb.ClientEvent) -> client.Conversation:
        async with client.channel(served.addr, None) as ch:
            return await client.converse(ch, [bytes(2 * FRAME)], chunk_ms=80, start=start, realtime=False)

    conv = served.thread.run(attempt(client.start_event(sample_rate=16000)))
    assert conv.code == grpc.StatusCode.INVALID_ARGUMENT and "24000 Hz" in conv.details
    conv = served.thread.run(attempt(client.start_event(sample_rate=24000, chunk_ms=200)))
    assert conv.code == grpc.StatusCode.INVALID_ARGUMENT and "start.chunk_ms 200" in conv.details
    conv = served.thread.run(attempt(client.start_event(sample_rate=24000, instructions="be brief")))
    assert conv.code == grpc.StatusCode.INVALID_ARGUMENT and "start.instructions" in conv.details
    for field, value, message in (
        ("temperature", -0.5, "start.temperature -0.5: must be from 0 (greedy) to 5"),
        ("temperature", 7.0, "start.temperature 7.0: must be from 0 (greedy) to 5"),
        ("top_k", 0, "start.top_k 0: must be from 1 to the model's"),
    ):
        start = client.start_event(sample_rate=24000)
        setattr(start.start, field, value)
        conv = served.thread.run(attempt(start))
        assert conv.code == grpc.StatusCode.INVALID_ARGUMENT and message in conv.details, conv.details


def sampled_start(temperature: float, top_k: int) -> pb.ClientEvent:
    """A SessionStart asking for the session's own sampling (``SessionStart.temperature``, ``top_k``)."""
    start = client.start_event(sample_rate=24000, chunk_ms=80)
    start.start.temperature, start.start.top_k = temperature, top_k
    return start


def test_a_model_without_video_says_so_and_refuses_frames(served: Served) -> None:
    """``duplex talk --video`` against a Moshi checkpoint: the ready's video_size is 0, and a frame ends the stream
    with a clear INVALID_ARGUMENT."""
    frame = pb.ClientEvent(video=pb.VideoFrame(seq=0, rgb=bytes(32 * 32 * 3), width=32, height=32))

    async def attempt() -> client.Conversation:
        async with client.channel(served.addr, None) as ch:
            return await client.converse(
                ch,
                [bytes(2 * FRAME)] * 3,
                chunk_ms=80,
                start=client.start_event(sample_rate=24000),
                realtime=False,
                extra=[(1, frame)],
            )

    conv = served.thread.run(attempt())
    assert conv.of("ready")[0].event.ready.video_size == 0
    assert conv.code == grpc.StatusCode.INVALID_ARGUMENT and "video: this model takes no video input" in conv.details


def test_a_session_among_others_equals_upstream_alone(served: Served) -> None:
    """Three live sessions: A from the start, the witness T once A is going, B once T is; A leaves while T
    talks (T's slot may move into A's), B joins and leaves. A and B sample with their own settings
    (``SessionStart.temperature``/``top_k``), T greedily as the engine does. T's text is upstream's greedy loop's
    token for token, its audio upstream's to one PCM16 step (the engine runs batch-invariant kernels, upstream
    its defaults); A's text is not (it sampled)."""
    a, t, b = (varied_audio(1, n, seed=s)[0] for n, s in ((30, 11), (42, 12), (15, 13)))

    async def three() -> list[client.Conversation]:
        """A starts; T once A has had an output; B once T has had five: all three share steps by construction."""
        a_going, t_going = asyncio.Event(), asyncio.Event()
        t_outputs = [0]

        def on_t(ev: pb.ServerEvent) -> None:
            t_outputs[0] += ev.HasField("audio")
            if t_outputs[0] >= 5:
                t_going.set()

        async with client.channel(served.addr, None) as ch:

            async def one(
                audio: torch.Tensor, after: asyncio.Event | None, on_event: Any, start: pb.ClientEvent
            ) -> client.Conversation:
                if after is not None:
                    await after.wait()
                return await client.converse(ch, pcm_chunks(audio), chunk_ms=80, start=start, on_event=on_event)

            return list(
                await asyncio.gather(
                    one(a, None, lambda ev: ev.HasField("audio") and a_going.set(), sampled_start(1.5, 50)),
                    one(t, a_going, on_t, client.start_event(sample_rate=24000, chunk_ms=80)),
                    one(b, t_going, None, sampled_start(1.0, 20)),
                )
            )

    convs = served.thread.run(three(), timeout=120)
    for conv in convs:
        assert conv.code == grpc.StatusCode.OK, conv.details
        assert not conv.of("warning"), [r.event.warning.message for r in conv.of("warning")]
    witness = convs[1]
    sizes = {r.event.audio.timing.batch_size for r in witness.of("audio")}
    assert max(sizes) >= 3 and min(sizes) <= 2, f"the others did not share the witness's steps: {sizes}"

    text, wave = upstream_alone(served.directory, t)
    audio = by_seq(witness, "audio")
    assert sorted(audio) == list(range(len(wave)))
    for seq, ref in enumerate(wave):
        got = np.frombuffer(audio[seq].audio.pcm, dtype="<i2") if audio[seq].audio.pcm else np.zeros(FRAME, "<i2")
        diff = int(np.abs(got.astype(np.int32) - ref.astype(np.int32)).max())
        assert diff <= 1, f"chunk {seq}: audio differs from upstream by {diff} PCM16 steps"
    decoder = MoshiTextDecoder(served.engine.served.ckpt.text_tokenizer, served.engine.served.pad_ids)
    expected = {seq: decoder.feed(tokens)[0] for seq, tokens in enumerate(text)}
    got_text = {seq: ev.text.text for seq, ev in by_seq(witness, "text").items()}
    assert got_text == {seq: s for seq, s in expected.items() if s}
    assert sum(bool(w.any()) for w in wave) >= len(wave) // 2  # the comparison is over real model audio
    a_text, _ = upstream_alone(served.directory, a)
    decoder = MoshiTextDecoder(served.engine.served.ckpt.text_tokenizer, served.engine.served.pad_ids)
    greedy_a = "".join(decoder.feed(tokens)[0] for tokens in a_text)
    assert "".join(r.event.text.text for r in convs[0].of("text")) != greedy_a, "A sampled with its own settings"
