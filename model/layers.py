"""Transformer building blocks: RMSNorm, rotary embeddings, grouped-query attention with a ring KV cache.

Shapes use: B batch (sessions), T sequence (frames), F new frames in a streaming step, H query heads,
Hkv key/value heads, G = H / Hkv queries per KV head, D head dim, R ring length (window + max chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import invariant
from .config import ModelConfig


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoint names) that honours batch-invariant steps."""

    def forward(self, x: Tensor) -> Tensor:
        return invariant.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.float() * scale).to(x.dtype) * self.weight


def rotary(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables for absolute ``positions`` (any shape) → (*positions.shape, head_dim/2).

    Angles are computed in float64: an hour-long session reaches position 90 000, where float32 angles
    would already be off by ~1e-2 rad.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim))
    angles = positions.to(torch.float64)[..., None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of the last dim. x (..., T, D); cos/sin broadcast to (..., T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def sliding_window_mask(q_pos: Tensor, k_pos: Tensor, window: int) -> Tensor:
    """Boolean mask (True = may attend): key at or before the query and fewer than ``window`` back.

    q_pos (..., Tq), k_pos (..., Tk) → (..., Tq, Tk). Negative key positions mark empty cache entries.
    """
    q = q_pos[..., :, None]
    k = k_pos[..., None, :]
    return (k <= q) & (k > q - window) & (k >= 0)


@dataclass
class StepGeometry:
    """What every layer of one streaming sub-step shares, built once per sub-step rather than per layer:
    the rotary tables of the new positions, where their keys go in the ring, and the attention bias."""

    cos: Tensor
    """(B, 1, F, D/2) rotary cosines of the new frames' absolute positions."""
    sin: Tensor
    """(B, 1, F, D/2) rotary sines."""
    ring_idx: Tensor
    """(B, Hkv, F, D) ring entry of each new key/value, expanded for ``scatter_``."""
    bias: Tensor
    """(B, Hkv, G*F, R) additive attention bias over the ring: 0 may attend, -inf may not (what SDPA builds
    from a boolean mask on every call; built here once for all layers, and materialised for every KV head
    because SDPA reads a broadcast mask more slowly than a dense one)."""


def attention_bias(mask: Tensor, groups: int, dtype: torch.dtype) -> Tensor:
    """Boolean mask (B, T, S) → additive bias (B, 1, G*T, S) for grouped queries folded into rows g*T + t."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return bias[:, None].repeat(1, 1, groups, 1)


class Attention(nn.Module):
    """Causal sliding-window grouped-query attention.

    Grouped queries are folded into the sequence axis — q (B, Hkv, G*T, D) against k/v (B, Hkv, T, D) —
    so one SDPA call serves all G query heads of a KV head without copying K/V G times.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.groups = cfg.n_heads // cfg.n_kv_heads
        self.window, self.theta = cfg.window, cfg.rope_theta
        self.wq = Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def geometry(self, pos: Tensor, ring_idx: Tensor, mask: Tensor, dtype: torch.dtype) -> StepGeometry:
        """The shared per-sub-step tensors for positions ``pos`` (B, F) written at ``ring_idx`` (B, F), with
        ``mask`` (B, F, R) from the ring's positions after the write."""
        cos, sin = rotary(pos, self.head_dim, self.theta, dtype)  # (B, F, D/2)
        idx = ring_idx[:, None, :, None].expand(-1, self.n_kv, -1, self.head_dim)
        bias = attention_bias(mask, self.groups, dtype).expand(-1, self.n_kv, -1, -1).contiguous()
        return StepGeometry(cos[:, None], sin[:, None], idx, bias)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape  # batch, new frames, d_model
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.wv(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """q (B, H, T, D), k/v (B, Hkv, S, D), bias (B or 1, 1, G*T, S) → (B, T, H*D)."""
        B, _, T, D = q.shape
        qg = q.reshape(B, self.n_kv, self.groups * T, D)  # head h = kv*G + g → rows g*T + t
        o = F.scaled_dot_product_attention(qg, k, v, attn_mask=bias)  # (B, Hkv, G*T, D)
        return o.reshape(B, self.n_heads, T, D).transpose(1, 2).reshape(B, T, self.n_heads * D)

    def forward(self, x: Tensor) -> Tensor:
        """Full-sequence (teacher-forced) pass from position 0. x (B, T, d_model)."""
        T = x.shape[1]
        pos = torch.arange(T, device=x.device)
        cos, sin = rotary(pos[None], self.head_dim, self.theta, x.dtype)  # (1, T, D/2)
        q, k, v = self._qkv(x, cos[:, None], sin[:, None])
        mask = sliding_window_mask(pos, pos, self.window)[None]  # (1, T, T)
        return self.wo(self._attend(q, k, v, attention_bias(mask, self.groups, x.dtype)))

    def step(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, geo: StepGeometry) -> Tensor:
        """Streaming pass over F new frames per session, reading and updating the ring cache in place.

        x (B, F, d_model); k_cache/v_cache (B, Hkv, R, D) views of the sessions' slots; ``geo`` the
        sub-step's shared geometry (``geometry``).
        """
        q, k, v = self._qkv(x, geo.cos, geo.sin)
        k_cache.scatter_(2, geo.ring_idx, k)
        v_cache.scatter_(2, geo.ring_idx, v)
        return self.wo(self._attend(q, k_cache, v_cache, geo.bias))


class SwiGLU(nn.Module):
    """Dense SwiGLU feed-forward (the shared expert)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w13 = Linear(d_model, 2 * hidden, bias=False)  # gate and up projections, concatenated
        self.w2 = Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)
