"""Per-session streaming state, batched over a replica's session slots.

The engine keeps its live sessions packed in slots ``0..n-1``; a step runs on that prefix through views,
never gathering caches. A session leaving is swap-removed (``move`` the last slot into its place).
Memory per slot is fixed at creation: ring KV caches of ``cache_len`` frames per layer, so an hour-long
session costs what a ten-second one does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import ModelConfig


@dataclass
class StreamState:
    """Streaming state for ``capacity`` session slots (moshi-style explicit state with a batch dim)."""

    k: list[Tensor]
    """Per layer (slots, Hkv, R, D) ring of keys; R = window + feedback_delay_frames."""
    v: list[Tensor]
    """Per layer (slots, Hkv, R, D) ring of values."""
    ring_pos: Tensor
    """(slots, R) int64: absolute frame position held by each ring entry, -1 while empty."""
    next_pos: Tensor
    """(slots,) int64: absolute position of the session's next frame (frames consumed so far)."""
    feedback: Tensor
    """(slots, 3 + A, delay) int64: the session's last ``delay`` outputs (audio code, text token, control,
    then the A agenda tokens), entry p % delay holds the output of frame p; fed back ``delay`` frames later."""
    bos: Tensor
    """(3 + A,) int64: the ids fed back before a session has any output (an empty agenda is all zeros)."""

    @classmethod
    def create(
        cls, cfg: ModelConfig, capacity: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> StreamState:
        shape = (capacity, cfg.n_kv_heads, cfg.cache_len, cfg.head_dim)
        # zeros, not empty: masked attention still multiplies by V, and garbage could hold NaN/Inf
        k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        bos = torch.tensor(
            [cfg.audio_codes, cfg.pad_token, cfg.control_classes, *(0 for _ in cfg.agenda_classes)], device=device
        )
        state = cls(
            k=k,
            v=v,
            ring_pos=torch.full((capacity, cfg.cache_len), -1, dtype=torch.long, device=device),
            next_pos=torch.zeros(capacity, dtype=torch.long, device=device),
            feedback=bos[None, :, None].repeat(capacity, 1, cfg.feedback_delay_frames),
            bos=bos,
        )
        return state

    @property
    def capacity(self) -> int:
        return int(self.next_pos.shape[0])

    def reset(self, slot: int) -> None:
        """Make ``slot`` a fresh session (old keys stay in memory but are masked by ring_pos = -1)."""
        self.ring_pos[slot] = -1
        self.next_pos[slot] = 0
        self.feedback[slot] = self.bos[:, None]

    def move(self, src: int, dst: int) -> None:
        """Copy the session in ``src`` into ``dst`` (compaction after a session leaves)."""
        if src == dst:
            return
        for cache in (*self.k, *self.v):
            cache[dst].copy_(cache[src])
        for t in (self.ring_pos, self.next_pos, self.feedback):
            t[dst] = t[src]

    def nbytes_per_slot(self) -> int:
        per = sum(t[0].numel() * t.element_size() for t in (*self.k, *self.v))
        return per + sum(t[0].numel() * t.element_size() for t in (self.ring_pos, self.next_pos, self.feedback))
