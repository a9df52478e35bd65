"""The output stage from hand-built typed step results: PCM bytes, UTF-8 split across chunks, turn events,
timing and metrics. No model, no thread, no gRPC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duplex.model.family_duplex import ByteTextDecoder
from duplex.serving.engine.executor import RowResult, StepResult
from duplex.serving.engine.output import OutputStage
from duplex.serving.engine.planner import PlannedRow
from duplex.serving.engine.session import Conversation, InputChunk
from duplex.serving.metrics import EngineMetrics
from duplex.v1 import duplex_pb2 as pb
from duplex.v1.duplex_pb2 import FLOOR_LISTEN, FLOOR_SPEAK

FRAME, FRAMES = 640, 5
CHUNK = FRAME * FRAMES
PAD, EOT = 256, 257
SR = 16000


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def stage() -> OutputStage:
    return OutputStage(
        EngineMetrics(),
        SR,
        CHUNK,
        lost_after_chunks=3,
        wall_us=lambda mono: int(mono * 1e6),
        clock=FakeClock(10.020),
    )


def conversation() -> Conversation:
    conv = Conversation("c", CHUNK, FRAME, max_send_backlog=50, text=ByteTextDecoder(EOT))
    conv.chunks_in_flight = 2
    return conv


def text_tokens(data: bytes, *extra: int) -> list[int]:
    tokens = list(data) + list(extra)
    return tokens + [PAD] * (FRAMES - len(tokens))


def result(rows: list[RowResult], wave: torch.Tensor, started: float = 10.0) -> StepResult:
    """A step result whose audio is ``wave`` (rows, samples) float in [-1, 1], as the executor encodes it."""
    pcm = (wave * 32767.0).round().to(torch.int16)
    return StepResult(
        cohort=1,
        kind="regular",
        batch_rows=3,
        rows=tuple(rows),
        pcm=pcm,
        loud=(pcm != 0).any(dim=1).tolist(),
        started=started,
        compute_ms=12.5,
    )


def row(
    conv: Conversation,
    seq: int,
    control: list[int],
    text: list[int],
    voiced: list[bool],
    substituted: bool = False,
    late: bool = False,
) -> RowResult:
    chunk = None if substituted else InputChunk(seq, bytes(2 * CHUNK), 777, 9.990, 9_990_000)
    return RowResult(PlannedRow(conv, chunk, seq, late), control, text, voiced)


def sample(stage: OutputStage, name: str, **labels: str) -> float:
    return stage.metrics.registry.get_sample_value(name, labels) or 0.0


def test_audio_is_pcm16_and_a_silent_chunk_is_empty(stage: OutputStage) -> None:
    loud, quiet = conversation(), conversation()
    wave = torch.zeros(2, CHUNK)
    wave[0] = torch.linspace(-1.0, 1.0, CHUNK)
    stage.publish(
        result(
            [
                row(loud, 0, [FLOOR_SPEAK] * FRAMES, text_tokens(b""), [False] * FRAMES),
                row(quiet, 0, [FLOOR_LISTEN] * FRAMES, text_tokens(b""), [False] * FRAMES),
            ],
            wave,
        )
    )
    audio = loud.outbox[0].audio
    expected = np.round(wave[0].numpy() * 32767.0).astype("<i2").tobytes()
    assert audio.pcm == expected
    assert (audio.seq, audio.samples, audio.output_sample) == (0, CHUNK, 0)
    assert list(audio.control) == [FLOOR_SPEAK] * FRAMES
    assert quiet.outbox[0].audio.pcm == b"", "a silent chunk carries no bytes"
    t = audio.timing
    assert (t.server_recv_us, t.step_start_us, t.server_send_us) == (9_990_000, 10_000_000, 10_020_000)
    assert (t.client_time_us, t.batch_size, t.cohort, t.late, t.substituted) == (777, 3, 1, False, False)
    assert t.queue_wait_ms == pytest.approx(10.0) and t.compute_ms == pytest.approx(12.5)
    assert loud.chunks_in_flight == 1 and loud.room.is_set(), "the consumed chunk frees room for the reader"
    assert sample(stage, "duplex_engine_chunks_total", kind="on_time") == 2
    assert sample(stage, "duplex_engine_step_seconds_count") == 1
    assert sample(stage, "duplex_engine_step_batch_rows_sum") == 3


def test_utf8_split_across_chunks_is_sent_whole(stage: OutputStage) -> None:
    conv = conversation()
    silent = torch.zeros(1, CHUNK)
    listen = [FLOOR_LISTEN] * FRAMES
    e_acute = "é".encode()
    stage.publish(result([row(conv, 0, listen, text_tokens(b"ab" + e_acute[:1]), [False] * FRAMES)], silent))
    stage.publish(result([row(conv, 1, listen, text_tokens(e_acute[1:], EOT), [False] * FRAMES)], silent))
    texts = [e.text for e in conv.outbox if e.HasField("text")]
    assert [(t.seq, t.text, t.final) for t in texts] == [(0, "ab", False), (1, "é", True)]
    assert [e.audio.output_sample for e in conv.outbox if e.HasField("audio")] == [0, CHUNK]


def test_turn_events_and_turn_latency(stage: OutputStage) -> None:
    conv = conversation()
    silent = torch.zeros(1, CHUNK)
    # the user speaks for 3 frames, then the model takes the turn 2 frames after the user stopped
    stage.publish(result([row(conv, 0, [FLOOR_LISTEN] * 5, text_tokens(b""), [True] * 3 + [False] * 2)], silent))
    stage.publish(result([row(conv, 1, [FLOOR_SPEAK] * 3 + [FLOOR_LISTEN] * 2, text_tokens(b""), [False] * 5)], silent))
    turns = [e.turn for e in conv.outbox if e.HasField("turn")]
    assert [(t.seq, t.type, t.frame, t.output_sample) for t in turns] == [
        (1, pb.MODEL_TURN_START, 0, CHUNK),
        (1, pb.MODEL_TURN_END, 3, CHUNK + 3 * FRAME),
    ]
    assert turns[1].truncated_at_sample == 3 * FRAME
    assert sample(stage, "duplex_engine_turn_latency_seconds_count") == 1
    assert sample(stage, "duplex_engine_turn_latency_seconds_sum") == pytest.approx(2 * FRAME / SR)


def test_substituted_silence_is_announced_and_a_late_chunk_dropped(stage: OutputStage) -> None:
    conv = conversation()
    stage.publish(
        result(
            [row(conv, 4, [FLOOR_LISTEN] * 5, text_tokens(b""), [False] * 5, substituted=True, late=True)],
            torch.zeros(1, CHUNK),
        )
    )
    warning, audio = conv.outbox[0].warning, conv.outbox[1].audio
    assert (warning.code, warning.seq) == ("CHUNK_LOST", 4)
    assert audio.timing.substituted and audio.timing.late and audio.seq == 4
    assert conv.chunks_in_flight == 2, "no chunk of the client's was consumed"
    assert sample(stage, "duplex_engine_chunks_total", kind="substituted") == 1
    stage.dropped(conv, 4)
    assert (conv.outbox[-1].warning.code, conv.outbox[-1].warning.seq) == ("LATE_CHUNK_DROPPED", 4)
    assert conv.chunks_in_flight == 1


def test_results_for_a_session_that_left_are_discarded(stage: OutputStage) -> None:
    conv = conversation()
    conv.left = True
    stage.publish(result([row(conv, 0, [FLOOR_SPEAK] * 5, text_tokens(b"x"), [False] * 5)], torch.ones(1, CHUNK)))
    assert not conv.outbox and conv.chunks_in_flight == 1
    stage.finish(conversation())
    done = conversation()
    stage.finish(done)
    assert done.finished and done.wake.is_set()
