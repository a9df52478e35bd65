"""The duplex model: early-fusion input → MoE transformer → per-frame audio code, text token, floor control
(and, with an agenda, its timer tokens).

Two ways to run the same weights:
  ``forward``  full-sequence, teacher-forced (training, evaluation of a whole recording);
  ``step``     streaming over session slots, one chunk of frames per session per call (serving).
They agree to float tolerance (tests/model/test_streaming.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import invariant
from .config import ModelConfig, ModelError
from .embed import FusedInput
from .family import Floor
from .layers import Attention, Linear, RMSNorm, StepGeometry, sliding_window_mask
from .moe import Experts, MoE, MoeImpl
from .state import StreamState

CONTROL_NAMES = tuple(f.name.lower() for f in Floor)
"""Floor-control class names by value (``Floor``)."""


@dataclass
class ModelOutput:
    """Logits per frame: audio (B, T, audio_codes), text (B, T, text_vocab), control (B, T, classes), and one
    (B, T, classes) per agenda token (none without an agenda)."""

    audio: Tensor
    text: Tensor
    control: Tensor
    aux_loss: Tensor
    agenda: tuple[Tensor, ...] = ()


@dataclass
class StepOutput:
    """Greedy decisions for each session's new frames: (n, F) int64 each, control probabilities, and the
    agenda tokens written (n, F, A) (A = 0 without an agenda)."""

    audio_codes: Tensor
    text_tokens: Tensor
    control: Tensor
    control_probs: Tensor  # (n, F, classes)
    agenda: Tensor


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, experts: Experts | None) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.moe_norm = RMSNorm(cfg.d_model)
        self.moe = MoE(cfg, layer, experts)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.attn(self.attn_norm(x))
        y, aux = self.moe(self.moe_norm(x))
        return x + y, aux

    def step(self, x: Tensor, k: Tensor, v: Tensor, geo: StepGeometry) -> Tensor:
        x = x + self.attn.step(self.attn_norm(x), k, v, geo)
        return x + self.moe(self.moe_norm(x), with_aux=False)[0]


def decide(
    cfg: ModelConfig, audio_logits: Tensor, text_logits: Tensor, control: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy per-frame decisions, with the audio gated by the model's own floor decision.

    The control head alone decides *when* the model holds the floor (learned, never a rule on the input).
    The audio code is then taken consistent with it: silence (code 0) while it listens or yields, the best
    non-silent code while it speaks or back-channels — so a "speak" decision is never voiced as silence and
    a "listen" decision never leaks sound. ``control`` may be logits or probabilities (B, T, classes).
    """
    ctrl = control.argmax(-1)
    speaking = (ctrl == Floor.SPEAK) | (ctrl == Floor.BACKCHANNEL)
    voiced = audio_logits[..., cfg.silent_codes :].argmax(-1) + cfg.silent_codes
    audio = torch.where(speaking, voiced, torch.zeros_like(voiced))
    return audio, text_logits.argmax(-1), ctrl


def delay(targets: Tensor, frames: int, bos: int) -> Tensor:
    """Teacher forcing input: targets (B, T) shifted right by ``frames``, BOS-filled → what ``step`` feeds back."""
    out = torch.full_like(targets, bos)
    if targets.shape[1] > frames:
        out[:, frames:] = targets[:, :-frames]
    return out


class ExpertShard(nn.Module):
    """What rank r > 0 of a replica holds: experts [first, first+n) of every layer and nothing else.

    Parameter names match the full model's (``blocks.{i}.moe.experts.w13``) so checkpoints load by name.
    """

    def __init__(self, cfg: ModelConfig, expert_range: tuple[int, int], impl: MoeImpl = "grouped") -> None:
        super().__init__()
        self.cfg = cfg
        first, n_local = expert_range
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"moe": nn.ModuleDict({"experts": Experts(cfg, first, n_local, impl)})})
            for _ in range(cfg.n_layers)
        )

    def experts(self, layer: int) -> Experts:
        block = self.blocks[layer]
        assert isinstance(block, nn.ModuleDict)
        moe = block["moe"]
        assert isinstance(moe, nn.ModuleDict)
        ex = moe["experts"]
        assert isinstance(ex, Experts)
        return ex


def expert_range(cfg: ModelConfig, rank: int, world_size: int) -> tuple[int, int]:
    """(first expert, count) held by ``rank`` of ``world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ModelError(f"rank {rank} is not in a world of size {world_size}")
    if cfg.n_experts % world_size:
        raise ModelError(f"n_experts ({cfg.n_experts}) is not divisible by the shard count ({world_size})")
    per = cfg.n_experts // world_size
    return rank * per, per


class DuplexModel(nn.Module):
    """Rank 0 of a replica (or the whole model when unsharded): dense weights + experts [first, first+n)."""

    def __init__(self, cfg: ModelConfig, expert_range: tuple[int, int] | None = None, impl: MoeImpl = "grouped"):
        super().__init__()
        self.cfg = cfg
        first, n_local = expert_range if expert_range is not None else (0, cfg.n_experts)
        self.inputs = FusedInput(cfg)
        self.layers = [
            Block(cfg, i, Experts(cfg, first, n_local, impl) if n_local else None) for i in range(cfg.n_layers)
        ]
        self.blocks = nn.ModuleList(self.layers)  # registers them; ``layers`` is the same objects, typed
        self.out_norm = RMSNorm(cfg.d_model)
        self.audio_head = Linear(cfg.d_model, cfg.audio_codes, bias=False)
        # with word tokens the text head has a bias: what lets a text vocabulary grown for fine-tuning start its new
        # tokens below the ones they copy (``train.grow_text``), so the grown model decides as it did
        self.text_head = Linear(cfg.d_model, cfg.text_vocab, bias=cfg.text_words > 0)
        if self.text_head.bias is not None:
            nn.init.zeros_(self.text_head.bias)
        self.control_head = Linear(cfg.d_model, cfg.control_classes, bias=False)
        self.agenda_heads = nn.ModuleList(Linear(cfg.d_model, n, bias=False) for n in cfg.agenda_classes)
        for weight in self.agenda_heads.parameters():
            nn.init.zeros_(weight)  # an agenda added to trained weights starts undecided (fine-tuning)

    # ----- full sequence ----------------------------------------------------------------------------
    def forward(
        self,
        audio: Tensor,
        own_audio: Tensor,
        own_text: Tensor,
        own_control: Tensor,
        text_in: Tensor | None = None,
        video: Tensor | None = None,
        video_at: Tensor | None = None,
        own_agenda: Tensor | None = None,
    ) -> ModelOutput:
        """audio (B, T*S) float in [-1, 1]; own_* (B, T) the model's own outputs already delayed
        (see ``delay``); text_in (B, T, slots); video (K, 3, V, V) at (row, frame) video_at (K, 2);
        own_agenda (B, T, A) delayed agenda tokens (None = empty)."""
        frames = self._frames(audio)
        x = self.inputs(frames, own_audio, own_text, own_control, text_in, video, video_at, own_agenda)  # (B, T, d)
        aux = x.new_zeros(())
        for block in self.layers:
            x, a = block(x)
            aux = aux + a
        h = self.out_norm(x)
        agenda = tuple(head(h) for head in self.agenda_heads)
        heads = (self.audio_head(h), self.text_head(h), self.control_head(h))
        return ModelOutput(*heads, aux / len(self.layers), agenda)

    def _frames(self, audio: Tensor) -> Tensor:
        S = self.cfg.frame_samples
        if audio.dim() != 2:
            raise ModelError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        if audio.shape[1] % S:
            raise ModelError(f"audio has {audio.shape[1]} samples per session, not a multiple of the frame size {S}")
        if not torch.isfinite(audio).all():
            bad = (~torch.isfinite(audio)).any(dim=1).nonzero().flatten().tolist()
            raise ModelError(f"audio contains NaN or Inf (session rows {bad})")
        return audio.view(audio.shape[0], -1, S)

    # ----- streaming --------------------------------------------------------------------------------
    def new_state(self, capacity: int) -> StreamState:
        p = next(self.parameters())
        return StreamState.create(self.cfg, capacity, p.device, p.dtype)

    @torch.no_grad()
    def step(
        self,
        state: StreamState,
        audio: Tensor,
        rows: slice | None = None,
        active: Tensor | None = None,
        text_in: Tensor | None = None,
        video: Tensor | None = None,
        video_rows: Tensor | None = None,
        batch_invariant: bool = False,
    ) -> StepOutput:
        """Advance the sessions in the slot range ``rows`` (default ``0..n-1``) by one chunk each.

        audio (n, F*S) → decisions (n, F). ``active`` (n,) bool marks rows that really have a chunk now; an
        inactive row inside the range is computed but nothing of it is committed (its position, outputs and
        visible cache stay as they were), so an engine can step a contiguous block of slots while one
        member's chunk is still in flight. A chunk longer than ``feedback_delay_frames`` runs as one-pass
        sub-steps. text_in (n, F, slots) byte tokens (PAD = none); video (K, 3, V, V) for the rows
        ``video_rows`` (K,) (indices into the n rows), attached to the chunk's first frame.

        ``batch_invariant``: every row's outputs are bit-identical whatever the other rows hold, how many
        there are and where the row sits (see ``invariant``); otherwise they agree to float rounding only.
        """
        frames = self._frames(audio)
        n, F, _ = frames.shape
        rows = slice(0, n) if rows is None else rows
        start, stop, _ = rows.indices(state.capacity)
        if stop - start != n or rows.step not in (None, 1):
            raise ModelError(f"rows {rows} do not match {n} sessions of audio (state has {state.capacity} slots)")
        if active is not None and active.shape != (n,):
            raise ModelError(f"active must be ({n},) bool, got {tuple(active.shape)}")
        if text_in is not None and text_in.shape[:2] != (n, F):
            raise ModelError(f"text_in must be (sessions={n}, frames={F}, slots), got {tuple(text_in.shape)}")
        if video is not None and (video_rows is None or video_rows.shape != (video.shape[0],)):
            raise ModelError("video needs video_rows: one row index per video frame")
        with invariant.batch_invariant(batch_invariant):
            return self._step(state, frames, rows, active, text_in, video, video_rows)

    def _step(
        self,
        state: StreamState,
        frames: Tensor,
        rows: slice,
        active: Tensor | None,
        text_in: Tensor | None,
        video: Tensor | None,
        video_rows: Tensor | None,
    ) -> StepOutput:
        F = frames.shape[1]
        D = self.cfg.feedback_delay_frames
        outs: list[StepOutput] = []
        for s in range(0, F, D):
            e = min(s + D, F)
            at = None
            if s == 0 and video is not None and video_rows is not None:
                at = torch.stack([video_rows, torch.zeros_like(video_rows)], dim=1)
            outs.append(
                self._substep(
                    state,
                    rows,
                    active,
                    frames[:, s:e],
                    None if text_in is None else text_in[:, s:e],
                    video if s == 0 else None,
                    at,
                )
            )
        if len(outs) == 1:
            return outs[0]
        return StepOutput(*(torch.cat([getattr(o, f) for o in outs], dim=1) for f in StepOutput.__dataclass_fields__))

    def _substep(
        self,
        st: StreamState,
        rows: slice,
        active: Tensor | None,
        frames: Tensor,
        text_in: Tensor | None,
        video: Tensor | None,
        video_at: Tensor | None,
    ) -> StepOutput:
        F = frames.shape[1]
        cfg = self.cfg
        pos = st.next_pos[rows, None] + torch.arange(F, device=frames.device)  # (n, F) absolute positions
        fb_idx = pos % cfg.feedback_delay_frames
        feedback = st.feedback[rows]
        streams = feedback.shape[1]
        fb = feedback.gather(2, fb_idx[:, None, :].expand(-1, streams, -1))  # (n, 3+A, F): outputs at pos - delay
        own_agenda = fb[:, 3:].transpose(1, 2) if streams > 3 else None
        x = self.inputs(frames, fb[:, 0], fb[:, 1], fb[:, 2], text_in, video, video_at, own_agenda)
        ring_idx = pos % cfg.cache_len
        # Keys of inactive rows are written into ring entries that only hold positions already outside
        # every future window (ring length = window + delay), and their positions are not committed.
        ring_pos = st.ring_pos[rows] if active is None else st.ring_pos[rows].clone()
        ring_pos.scatter_(1, ring_idx, pos)
        mask = sliding_window_mask(pos, ring_pos, cfg.window)  # (n, F, R)
        geo = self.layers[0].attn.geometry(pos, ring_idx, mask, x.dtype)  # shared by every layer
        for i, block in enumerate(self.layers):
            x = block.step(x, st.k[i][rows], st.v[i][rows], geo)
        h = self.out_norm(x)
        probs = self.control_head(h).float().softmax(-1)
        audio, text, control = decide(self.cfg, self.audio_head(h), self.text_head(h), probs)
        written = torch.stack([audio, text, control], dim=1)
        if self.agenda_heads:
            agenda = torch.stack([head(h).argmax(-1) for head in self.agenda_heads], dim=-1)
            written = torch.cat([written, agenda.transpose(1, 2)], dim=1)
        else:  # no agenda: nothing more to write (an empty (n, F, 0) for the output)
            agenda = audio.new_empty((*audio.shape, 0))
        new_fb = feedback.scatter(2, fb_idx[:, None, :].expand(-1, streams, -1), written)
        if active is None:
            st.feedback[rows] = new_fb
            st.next_pos[rows] += F
        else:
            keep = active[:, None]
            st.ring_pos[rows] = torch.where(keep, ring_pos, st.ring_pos[rows])
            st.feedback[rows] = torch.where(keep[:, :, None], new_fb, feedback)
            st.next_pos[rows] += F * active.long()
        return StepOutput(audio, text, control, probs, agenda)
