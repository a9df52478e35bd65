"""Hibiki through the engine: a guided tiny Hibiki checkpoint served over real gRPC. A client that ends its input
still hears the translation's tail — the engine feeds silence after its last chunk until the model is done —
and then the stream ends OK; each of two sessions sharing steps equals the same session stepped alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import torch
from moshi_fixtures import FRAME, varied_audio  # first: sets NO_TORCH_COMPILE

from duplex.model.moshi.checkpoint import load_checkpoint
from duplex.model.moshi.hibiki import HibikiServed
from duplex.model.moshi.served import MoshiTextDecoder
from duplex.model.moshi.tiny import init_checkpoint
from duplex.model.spec import ModelSource
from duplex.serving import client
from duplex.v1 import duplex_pb2 as pb

from .helpers import served_engine

CFG, TAIL = 3.0, 6
"""Guidance, and the tail cap in frames (the tiny model rarely pads its text: the cap ends its tail)."""


def served_hibiki(directory: Path) -> HibikiServed:
    return HibikiServed(load_checkpoint(directory), cfg_coef=CFG, tail_max_frames=TAIL, tail_hangover_frames=100)


def pcm16(audio: torch.Tensor) -> np.ndarray:
    return (audio * 32767.0).round().to(torch.int16).numpy()


def alone(served: HibikiServed, pcm: np.ndarray) -> tuple[list[list[int]], list[np.ndarray]]:
    """Per frame, text tokens and PCM16 of the session stepped alone: its chunks as the engine reads them, then
    its input ended and silence until the model is done."""
    slots = served.new_slots(1)
    x = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    text: list[list[int]] = []
    wave: list[np.ndarray] = []
    frames = len(pcm) // FRAME
    for f in range(frames + TAIL):
        if f == frames:
            slots.end_input(0)
        chunk = x[f * FRAME : (f + 1) * FRAME] if f < frames else torch.zeros(FRAME)
        out = served.step(slots, chunk[None], slice(0, 1), batch_invariant=True)
        assert out.done is not None and bool(out.done[0]) == (f == frames + TAIL - 1)
        text.append(out.text[0])
        wave.append(pcm16(out.wave[0]))
    return text, wave


def test_a_hibiki_session_ends_after_its_tail_and_equals_itself_alone(tmp_path: Path) -> None:
    directory = init_checkpoint("hibiki", tmp_path / "hibiki", seed=4)
    inputs = [pcm16(varied_audio(1, n, seed=s)[0]) for n, s in ((10, 21), (6, 22))]
    source = ModelSource(uri=str(directory), cfg_coef=CFG)
    with served_engine(source, served_hibiki(directory), max_sessions=4) as served:

        async def both() -> list[client.Conversation]:
            async with client.channel(served.addr, None) as ch:
                return list(
                    await asyncio.gather(
                        *(
                            client.converse(
                                ch,
                                client.split_chunks(pcm, FRAME),
                                chunk_ms=80,
                                start=client.start_event(sample_rate=24000, chunk_ms=80),
                            )
                            for pcm in inputs
                        )
                    )
                )

        convs = served.thread.run(both(), timeout=120)
        engine = served.engine  # its metrics are read below, after it stopped

    reference = served_hibiki(directory)  # its own modules: the engine's are not touched from here
    decoder_of = lambda: MoshiTextDecoder(reference.ckpt.text_tokenizer, reference.pad_ids)  # noqa: E731
    shared = set()
    for pcm, conv in zip(inputs, convs, strict=True):
        assert conv.code == grpc.StatusCode.OK, conv.details
        assert not conv.of("warning"), [r.event.warning.message for r in conv.of("warning")]
        frames = len(pcm) // FRAME
        audio = {r.event.audio.seq: r.event.audio for r in conv.of("audio")}
        # its own chunks answered, then the tail: TAIL more chunks of the model's audio, then the stream ended
        assert sorted(audio) == list(range(frames + TAIL))
        assert any(audio[seq].pcm for seq in range(frames, frames + TAIL)), "no trailing audio after the input"
        own = [audio[seq].timing for seq in range(frames)]
        tail = [audio[seq].timing for seq in range(frames, frames + TAIL)]
        assert all(t.client_time_us > 0 for t in own) and all(t.client_time_us == 0 for t in tail)
        assert all(0 < t.server_recv_us <= t.step_start_us for t in tail), "a tail chunk's time is when it was queued"
        shared |= {audio[seq].timing.batch_size for seq in audio}
        text, wave = alone(reference, pcm)
        for seq, ref in enumerate(wave):
            got = np.frombuffer(audio[seq].pcm, dtype="<i2") if audio[seq].pcm else np.zeros(FRAME, "<i2")
            assert np.array_equal(got, ref), f"chunk {seq}: audio differs from the session alone"
        decoder = decoder_of()
        expected = {seq: decoder.feed(tokens)[0] for seq, tokens in enumerate(text)}
        got_text = {r.event.text.seq: r.event.text.text for r in conv.of("text")}
        assert got_text == {seq: s for seq, s in expected.items() if s}
        turns = [r.event.turn.type for r in conv.of("turn")]
        assert pb.USER_BARGE_IN not in turns, "the speaker's voice is the source, not a barge-in"
    assert max(shared) == 2, f"the two sessions never shared a step: batch sizes {shared}"

    def chunks(kind: str) -> float:
        return engine.metrics.registry.get_sample_value("duplex_engine_chunks_total", {"kind": kind}) or 0.0

    assert chunks("tail") == 2 * TAIL, "the silence fed after the input is counted apart from the clients' chunks"
    assert chunks("on_time") + chunks("late") == sum(len(pcm) // FRAME for pcm in inputs)
