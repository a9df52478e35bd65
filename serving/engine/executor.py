"""The step executor: runs the served model (``duplex.model.family.ServedModel``) over one slot range of the
replica's state.

It owns the model family's per-slot streaming state and honours one execution mask: rows a plan leaves
inactive are computed but nothing of them is committed. What it hands back is plain data — ints, bools and one
waveform tensor per row — for the output stage on the event loop. Nothing here knows which family it steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from duplex.model.detect import voiced_frames
from duplex.model.family import InputEnds, Prompted, ServedModel, SessionSampling

from .planner import PlannedPiece, PlannedRow, SlotDropPrefill, SlotEndInput, SlotMove, SlotOp, StepPlan


@dataclass(frozen=True)
class RowResult:
    """What one active row of a step produced."""

    row: PlannedRow
    """The planned row (whose session, which chunk, late, substituted)."""
    control: list[int]
    """Floor control per frame (``duplex.model.family.Floor`` values, equal to ``duplex.v1.FloorControl``'s)."""
    text: list[int]
    """The model's text tokens of this step (the family's ids)."""
    voiced: list[bool]
    """Per input frame: was it user speech (``duplex.model.detect.voiced_frames``)."""
    done: bool = False
    """The model's output is over since the session's input ended (``FamilyStep.done``)."""


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
    """The served model's step (model and codec) over the whole range."""


@dataclass
class _Prefill:
    """A slot's prompt prefill: its prompt, and its job once the first piece started it."""

    prompt: object
    job: object | None = None
    pieces: int = 0
    seconds: float = 0.0
    """Time its pieces took, summed."""
    started: float = 0.0
    """Monotonic time its first piece began."""


@dataclass(frozen=True)
class PieceResult:
    """One prefill piece that ran."""

    slot: int
    done: bool
    """The prefill is done: the slot holds the prompted session, ready to step."""
    seconds: float
    """This piece's time."""
    pieces: int
    """Pieces run for this prefill so far."""
    total_seconds: float
    """Time the prefill's pieces took so far, summed (the step thread's time spent on it)."""
    elapsed_seconds: float
    """From its first piece's start to this piece's end (other sessions' steps ran between its pieces)."""


class StepExecutor:
    """The served model over the slot state of one replica."""

    def __init__(
        self,
        served: ServedModel[Any],
        slots: int,
        chunk_samples: int,
        batch_invariant: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.served, self.clock = served, clock
        self.format = served.format
        self.chunk_samples = chunk_samples
        self.frames = chunk_samples // self.format.frame_samples
        self.state = served.new_slots(slots)
        self.batch_invariant = batch_invariant
        self.prefills: dict[int, _Prefill] = {}
        """Prompt prefills not done yet, by the slot of their session (they move with it)."""

    def apply(self, ops: Sequence[SlotOp]) -> None:
        """Carry out the planner's slot moves, resets, input ends and dropped prefills on the streaming state,
        in order. A reset sets the session's own sampling settings when it has them, and with a prompt queues
        its prefill (``prefill_piece`` runs it, on state of its own); a prefill moves with its slot."""
        for op in ops:
            if isinstance(op, SlotMove):
                self.state.move(op.src, op.dst)
                moving = self.prefills.pop(op.src, None)
                self.prefills.pop(op.dst, None)
                if moving is not None:
                    self.prefills[op.dst] = moving
            elif isinstance(op, SlotEndInput):
                if not isinstance(self.state, InputEnds):
                    raise TypeError(f"{type(self.state).__name__} cannot end a slot's input")
                self.state.end_input(op.slot)
            elif isinstance(op, SlotDropPrefill):
                self.prefills.pop(op.slot, None)  # its job, and the staging state it holds, go with it
            else:
                self.state.reset(op.slot)
                self.prefills.pop(op.slot, None)
                if op.sampling is not None and isinstance(self.served, SessionSampling):
                    self.served.set_sampling(self.state, op.slot, op.sampling)
                if op.prompt is not None:
                    if not isinstance(self.served, Prompted):
                        raise TypeError(f"{type(self.served).__name__} takes no prompt")
                    self.prefills[op.slot] = _Prefill(op.prompt)

    def prefill_piece(self, piece: PlannedPiece) -> PieceResult:
        """Run the next piece of the prefill of ``piece.slot`` (its first piece starts it)."""
        prefill = self.prefills.get(piece.slot)
        if prefill is None or not isinstance(self.served, Prompted):
            raise RuntimeError(f"slot {piece.slot} has no prefill to run")
        started = self.clock()
        if prefill.job is None:
            prefill.job = self.served.prefill_start(self.state, piece.slot, prefill.prompt)
            prefill.started = started
        done = self.served.prefill_piece(self.state, prefill.job, piece.slot, self.batch_invariant)
        ended = self.clock()
        prefill.pieces += 1
        prefill.seconds += ended - started
        if done:
            del self.prefills[piece.slot]
        return PieceResult(piece.slot, done, ended - started, prefill.pieces, prefill.seconds, ended - prefill.started)

    def run(self, plan: StepPlan) -> StepResult:
        started = self.clock()
        n, F = len(plan.rows), self.frames
        width = 2 * self.chunk_samples
        pcm_in = bytearray(n * width)  # inactive rows and substituted chunks: silence
        active = torch.zeros(n, dtype=torch.bool)
        text_slots = self.format.text_in_slots
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
                    text_in = torch.full((n, F, text_slots), self.format.text_pad, dtype=torch.long)
                text_in[i].view(-1)[: len(row.text)] = torch.tensor(row.text, dtype=torch.long)
            if row.video is not None:
                videos.append(row.video)
                video_rows.append(i)
        audio = torch.frombuffer(pcm_in, dtype=torch.int16).view(n, self.chunk_samples).float() / 32768.0
        mask = None if bool(active.all()) else active  # the one execution mask, for model and codec
        out = self.served.step(
            self.state,
            audio,
            rows=plan.slots,
            active=mask,
            text_in=text_in,
            video=torch.stack(videos) if videos else None,
            video_rows=torch.tensor(video_rows, dtype=torch.long) if videos else None,
            batch_invariant=self.batch_invariant,
        )
        voiced = voiced_frames(audio, self.format.frame_samples).tolist()
        controls, texts, wave = out.control.tolist(), out.text, out.wave
        done = [False] * n if out.done is None else out.done.tolist()
        on = [i for i, row in enumerate(plan.rows) if row is not None]
        rows = tuple(
            RowResult(row, controls[i], texts[i], voiced[i], done[i])
            for i, row in enumerate(plan.rows)
            if row is not None
        )
        wave = wave if mask is None else wave[on]
        pcm = (wave * 32767.0).round().to(torch.int16)  # batched here: the event loop only copies bytes
        loud = (pcm != 0).any(dim=1).tolist()
        compute_ms = (self.clock() - started) * 1e3
        return StepResult(plan.cohort, plan.kind, n, rows, pcm, loud, started, compute_ms)
