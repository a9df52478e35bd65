"""Kyutai's Hibiki (streaming speech translation) behind the engine's ``ServedModel`` interface: ``MoshiServed``
with Hibiki's conditioning, classifier-free guidance and end of input, on upstream ``LMGen``.

Conditioning. Hibiki's LM sums a ``description`` LUT embedding into its input: every row is conditioned on
``very_good`` (as upstream's ``run_inference`` and server do). Each slot block gets condition tensors for its own
row count when its streaming state is created.

Classifier-free guidance (``cfg_coef`` ≠ 1; upstream's README: higher keeps the translation's voice closer to the
speaker's, 3 is typical). Upstream ``LMGen`` doubles the LM's batch: rows ``0..n`` are conditioned on
``very_good``, rows ``n..2n`` on ``very_bad``, the same input tokens feed both halves, and per row and step the
text logits and every depformer codebook's logits are mixed as ``null + (cond - null) · cfg_coef`` before
sampling. Row ``i`` of a block pairs with LM rows ``i`` and ``n + i`` only: the execution mask and resets are
repeated onto both halves by upstream itself, so join, pause and leave stay exact; moving a row here copies both
of its LM rows. The cost is two LM rows per session: a block of ``n`` sessions runs a ``2n``-row temporal
transformer and depformer and holds ``2n`` KV rings (Mimi runs ``n`` rows).

End of input. Hibiki lags its source by a few seconds, so when the client stops sending it still has words to
say. ``HibikiSlots.end_input`` marks a row's input as over; its next frame feeds the user stream the end-of-input
code (every codebook ``mimi.cardinality``, Mimi not advanced), as upstream's ``run_inference`` does, and the
frames after it Mimi's codes of the silence the engine feeds. The row is *done* at the first of: the model's text
end-of-sequence token (the tokenizer's ``eos_id``), ``tail_hangover_frames`` frames without a word since the
input ended or since the last word, or ``tail_max_frames`` frames after the input ended (``FamilyStep.done``).
The counters are per-row state: they move and reset with the row.

Floor control. The user's speech is Hibiki's source, not an interruption: a frame is SPEAK while the model
produces words (``served.FloorTracker``'s rule) and its turn ends in LISTEN, never in YIELD (no barge-in)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from moshi.conditioners.base import ConditionAttributes
from torch import Tensor

from ..config import ModelError
from ..family import StreamFormat
from .checkpoint import MoshiCheckpoint
from .served import FloorTracker, MoshiServed, MoshiSlots, _Block, _copy_state_row

DESCRIPTION = "description"
"""Hibiki's conditioner: a LUT over quality labels, summed into the LM's input."""
CONDITIONED = "very_good"
"""The label every row is conditioned on (upstream's ``get_condition_tensors``)."""
UNCONDITIONED = "very_bad"
"""The label of the guidance's contrasting half."""
TAIL_HANGOVER_FRAMES = 25
"""Frames without a word (2 s) after which a row whose input ended is done."""
TAIL_MAX_FRAMES = 250
"""Frames (20 s) after its input ended at which a row is done whatever it says."""


class TailTracker:
    """Per-row end-of-input state for ``rows`` rows (see the module docstring)."""

    def __init__(self, rows: int, pad_ids: frozenset[int], eos_id: int, hangover: int, cap: int) -> None:
        self.pad_ids = torch.tensor(sorted(pad_ids), dtype=torch.long)
        self.eos_id, self.hangover, self.cap = eos_id, hangover, cap
        self.since_end = torch.full((rows,), -1, dtype=torch.long)
        """Frames stepped since the input ended (-1: it has not; 0: ended, the end-of-input code is next)."""
        self.since_word = torch.zeros(rows, dtype=torch.long)
        """Frames since the last word, or since the input ended (while it has)."""
        self.done = torch.zeros(rows, dtype=torch.bool)

    def end_input(self, row: int) -> None:
        if int(self.since_end[row]) < 0:
            self.since_end[row] = 0
            self.since_word[row] = 0

    def first_tail_frame(self, active: Tensor) -> Tensor:
        """(n,) bool: active rows whose next frame is the first after their input ended."""
        return active.cpu() & (self.since_end == 0)

    def update(self, text: Tensor, active: Tensor) -> None:
        """One frame: text tokens (n,) (negative = none yet) of the active rows (n,) bool."""
        text, on = text.cpu(), active.cpu() & (self.since_end >= 0)
        word = (text >= 0) & (text != self.eos_id) & ~torch.isin(text, self.pad_ids)
        self.since_end = torch.where(on, self.since_end + 1, self.since_end)
        self.since_word = torch.where(on, torch.where(word, 0, self.since_word + 1), self.since_word)
        over = (text == self.eos_id) | (self.since_word >= self.hangover) | (self.since_end >= self.cap)
        self.done |= on & over

    def copy_row(self, i: int, dst: TailTracker, j: int) -> None:
        dst.since_end[j], dst.since_word[j], dst.done[j] = self.since_end[i], self.since_word[i], self.done[i]

    def reset(self, row: int) -> None:
        self.since_end[row], self.since_word[row], self.done[row] = -1, 0, False


class TranslationFloor(FloorTracker):
    """``FloorTracker`` for a translator: the speaker's voice never makes the end of a turn a barge-in."""

    def update(self, text: Tensor, voiced: Tensor, active: Tensor) -> Tensor:
        return super().update(text, torch.zeros_like(voiced), active)


@dataclasses.dataclass(eq=False)
class HibikiBlock(_Block):
    """A slot block's upstream streaming state plus its rows' end-of-input state."""

    tail: TailTracker


class HibikiSlots(MoshiSlots):
    """``MoshiSlots`` whose slots can have their input ended (``duplex.model.family.InputEnds``)."""

    served: HibikiServed

    def end_input(self, slot: int) -> None:
        self._check(slot)
        home = self._home.get(slot)
        if home is None:  # never stepped: a fresh stream in a one-row block until a step takes it in
            staging = self.served._new_block(slot, 1)
            self._blocks[(slot, slot + 1)] = staging
            home = self._home[slot] = (staging, 0)
        block = home[0]
        assert isinstance(block, HibikiBlock)
        block.tail.end_input(home[1])


class HibikiServed(MoshiServed):
    """``ServedModel`` for a Hibiki checkpoint: ``MoshiServed`` with its ``description`` conditioning,
    classifier-free guidance (``cfg_coef``; 1 = none) and end of input (see the module docstring)."""

    def __init__(
        self,
        ckpt: MoshiCheckpoint,
        temperature: float = 0.0,
        top_k: int = 250,
        device: torch.device | str | None = None,
        cfg_coef: float = 1.0,
        tail_hangover_frames: int = TAIL_HANGOVER_FRAMES,
        tail_max_frames: int = TAIL_MAX_FRAMES,
    ) -> None:
        if not math.isfinite(cfg_coef) or cfg_coef <= 0:
            raise ModelError(f"cfg_coef={cfg_coef} must be a positive number (1 = no guidance)")
        if tail_hangover_frames < 1 or tail_max_frames < 1:
            raise ModelError(
                f"tail_hangover_frames={tail_hangover_frames} and tail_max_frames={tail_max_frames} must be >= 1"
            )
        self.cfg_coef = float(cfg_coef)
        self.tail_hangover_frames, self.tail_max_frames = tail_hangover_frames, tail_max_frames
        self._conditions: dict[int, Any] = {}
        """Condition tensors by block row count."""
        super().__init__(ckpt, temperature=temperature, top_k=top_k, device=device)
        self.eos_id = int(ckpt.text_tokenizer.eos_id())
        self._format = dataclasses.replace(self._format, continues_after_input=True)

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (two LM rows per session)."""
        return self.cfg_coef != 1.0

    def _check_conditioning(self) -> None:
        name, lm = self.ckpt.name, self.lm
        if self.ckpt.family != "hibiki":
            raise ModelError(f"{name}: a {self.ckpt.family} checkpoint, not Hibiki (config.json model_type: hibiki)")
        provider = lm.condition_provider
        conditioners = {} if provider is None else dict(provider.conditioners)
        if DESCRIPTION not in conditioners or lm.fuser is None:
            why = f"cfg_coef={self.cfg_coef} needs" if self.guided else "Hibiki needs"
            raise ModelError(
                f"{name}: {why} the LM's {DESCRIPTION!r} conditioner (config.json 'conditioners' and 'fuser'); "
                f"this checkpoint has {sorted(conditioners) or 'none'}"
            )
        fused = {c for conds in lm.fuser.fuse2cond.values() for c in conds}
        if fused != {DESCRIPTION} or lm.fuser.fuse2cond.get("prepend"):
            raise ModelError(f"{name}: the fuser conditions on {sorted(fused)}; Hibiki's serving knows {DESCRIPTION!r}")
        known = getattr(getattr(conditioners[DESCRIPTION], "tokenizer", None), "possible_values", None)
        if known is not None and not {CONDITIONED, UNCONDITIONED} <= set(known):
            raise ModelError(
                f"{name}: the {DESCRIPTION!r} conditioner knows {known}, not {CONDITIONED}/{UNCONDITIONED}"
            )

    def _generator_options(self, temperature: float, top_k: int) -> dict[str, Any]:
        return {
            **super()._generator_options(temperature, top_k),
            "cfg_coef": self.cfg_coef,
            "condition_tensors": self._condition_tensors(1),
        }

    def _condition_tensors(self, rows: int) -> Any:
        """Conditions for a block of ``rows`` sessions: ``very_good`` per row, then (guided) ``very_bad``."""
        found = self._conditions.get(rows)
        if found is None:
            labels = [CONDITIONED] * rows + ([UNCONDITIONED] * rows if self.guided else [])
            attributes = [ConditionAttributes(text={DESCRIPTION: v}, tensor={}) for v in labels]
            with torch.no_grad():
                found = self._conditions[rows] = self.lm.condition_provider.prepare_and_provide(attributes)
        return found

    # --- ServedModel --------------------------------------------------------------------------------------

    @property
    def format(self) -> StreamFormat:
        return self._format

    def new_slots(self, slots: int) -> HibikiSlots:
        if slots < 1:
            raise ModelError(f"slots={slots} must be >= 1")
        return HibikiSlots(self, slots)

    # --- hooks of MoshiServed.step -------------------------------------------------------------------------

    def _encode(self, block: _Block, frame: Tensor, active: Tensor) -> Tensor:
        assert isinstance(block, HibikiBlock)
        first = block.tail.first_tail_frame(active).to(self.device)
        codes = super()._encode(block, frame, active & ~first)
        # upstream's end-of-input marker: every codebook of the user stream at the codebook size
        return torch.where(first[:, None, None], int(self.mimi.cardinality), codes)

    def _after_frame(self, block: _Block, text: Tensor, active: Tensor) -> None:
        assert isinstance(block, HibikiBlock)
        block.tail.update(text, active)

    def _done(self, block: _Block, active: Tensor) -> Tensor | None:
        assert isinstance(block, HibikiBlock)
        return block.tail.done.to(self.device) & active

    # --- upstream streaming state ------------------------------------------------------------------------

    def _new_block(self, start: int, rows: int) -> HibikiBlock:
        self.gen.condition_tensors = self._condition_tensors(rows)  # read when the block's state is created
        block = super()._new_block(start, rows)
        fields = {f.name: getattr(block, f.name) for f in dataclasses.fields(block)}
        fields["floor"] = TranslationFloor(rows, self.pad_ids, self.device)
        tail = TailTracker(rows, self.pad_ids, self.eos_id, self.tail_hangover_frames, self.tail_max_frames)
        return HibikiBlock(**fields, tail=tail)

    def _copy_row(self, src: _Block, i: int, dst: _Block, j: int) -> None:
        if src is dst and i == j:
            return
        super()._copy_row(src, i, dst, j)
        if self.guided:  # the row's unconditioned twin in the LM's second half
            for name, st in src.lm.items():
                _copy_state_row(st, src.rows + i, dst.lm[name], dst.rows + j)
        assert isinstance(src, HibikiBlock) and isinstance(dst, HibikiBlock)
        src.tail.copy_row(i, dst.tail, j)

    def _reset_row(self, block: _Block, row: int) -> None:
        super()._reset_row(block, row)  # upstream repeats the reset mask onto the LM's second half
        assert isinstance(block, HibikiBlock)
        block.tail.reset(row)
