"""The step executor: runs the model and the codec over one slot range of the replica's state.

It owns the model's ``StreamState`` and the codec's ``CodecState`` (one row per slot) and honours one
execution mask for both: rows a plan leaves inactive are computed but nothing of them is committed, in the
model (``DuplexModel.step(active=...)``) and in the codec (``Codec.decode(active=...)``) alike. What it hands
back is plain data — ints, bools and one waveform tensor per row — for the output stage on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from duplex.model.codec import Codec
from duplex.model.detect import voiced_frames
from duplex.model.model import DuplexModel
from duplex.v1.duplex_pb2 import FLOOR_BACKCHANNEL, FLOOR_SPEAK

from .planner import PlannedRow, SlotMove, SlotReset, StepPlan


@dataclass(frozen=True)
class RowResult:
    """What one active row of a step produced."""

    row: PlannedRow
    """The planned row (whose session, which chunk, late, substituted)."""
    control: list[int]
    """Floor control per frame (``duplex.v1.FloorControl`` values)."""
    text: list[int]
    """Text token per frame."""
    voiced: list[bool]
    """Per input frame: was it user speech (``duplex.model.detect.voiced_frames``)."""


@dataclass(frozen=True)
class StepResult:
    """One executed step: its active rows' outputs and its timing."""

    cohort: int
    """Index of the stepped cohort."""
    kind: str
    """regular, catchup or split."""
    batch_rows: int
    """Rows computed (the plan's slot range, inactive rows included)."""
    rows: tuple[RowResult, ...]
    """Outputs of the active rows, in slot order."""
    pcm: torch.Tensor
    """(len(rows), chunk_samples) int16: the model's audio as PCM16 samples, row i for ``rows[i]``."""
    loud: list[bool]
    """Per row: does its audio have any non-zero sample (a silent chunk is sent without bytes)."""
    started: float
    """Monotonic time the step began."""
    compute_ms: float
    """Model step + codec decode of the whole range."""


class StepExecutor:
    """Model + codec over the slot state of one replica."""

    def __init__(
        self,
        model: DuplexModel,
        codec: Codec,
        slots: int,
        chunk_samples: int,
        batch_invariant: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model, self.codec, self.clock = model, codec, clock
        self.cfg = model.cfg
        self.chunk_samples = chunk_samples
        self.frames = chunk_samples // self.cfg.frame_samples
        self.state = model.new_state(slots)
        self.codec_state = codec.new_state(slots)
        self.batch_invariant = batch_invariant

    def apply(self, ops: Sequence[SlotMove | SlotReset]) -> None:
        """Carry out the planner's slot moves and resets on the model and the codec state, in order."""
        for op in ops:
            if isinstance(op, SlotMove):
                self.state.move(op.src, op.dst)
                self.codec_state.move(op.src, op.dst)
            else:
                self.state.reset(op.slot)
                self.codec_state.reset(op.slot)

    def run(self, plan: StepPlan) -> StepResult:
        started = self.clock()
        n, F = len(plan.rows), self.frames
        width = 2 * self.chunk_samples
        pcm_in = bytearray(n * width)  # inactive rows and substituted chunks: silence
        active = torch.zeros(n, dtype=torch.bool)
        text_slots = self.cfg.text_in_slots
        text_in: torch.Tensor | None = None
        videos: list[torch.Tensor] = []
        video_rows: list[int] = []
        for i, row in enumerate(plan.rows):
            if row is None:
                continue
            active[i] = True
            if row.chunk is not None:
                pcm_in[i * width : (i + 1) * width] = row.chunk.pcm
            if row.text and text_slots:
                if text_in is None:
                    text_in = torch.full((n, F, text_slots), self.cfg.pad_token, dtype=torch.long)
                text_in[i].view(-1)[: len(row.text)] = torch.tensor(row.text, dtype=torch.long)
            if row.video is not None:
                videos.append(row.video)
                video_rows.append(i)
        audio = torch.frombuffer(pcm_in, dtype=torch.int16).view(n, self.chunk_samples).float() / 32768.0
        mask = None if bool(active.all()) else active  # the one execution mask, for model and codec
        out = self.model.step(
            self.state,
            audio,
            rows=plan.slots,
            active=mask,
            text_in=text_in,
            video=torch.stack(videos) if videos else None,
            video_rows=torch.tensor(video_rows, dtype=torch.long) if videos else None,
            batch_invariant=self.batch_invariant,
        )
        speaking = (out.control == FLOOR_SPEAK) | (out.control == FLOOR_BACKCHANNEL)
        codes = torch.where(speaking, out.audio_codes, 0)  # listen/yield frames decode as silence
        wave = self.codec.decode(codes, self.codec_state, rows=plan.slots, active=mask)
        voiced = voiced_frames(audio, self.cfg.frame_samples).tolist()
        controls, texts = out.control.tolist(), out.text_tokens.tolist()
        on = [i for i, row in enumerate(plan.rows) if row is not None]
        rows = tuple(
            RowResult(row, controls[i], texts[i], voiced[i]) for i, row in enumerate(plan.rows) if row is not None
        )
        wave = wave if mask is None else wave[on]
        pcm = (wave * 32767.0).round().to(torch.int16)  # batched here: the event loop only copies bytes
        loud = (pcm != 0).any(dim=1).tolist()
        compute_ms = (self.clock() - started) * 1e3
        return StepResult(plan.cohort, plan.kind, n, rows, pcm, loud, started, compute_ms)
