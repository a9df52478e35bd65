"""Mixture-of-experts feed-forward: router, expert weights, three exact execution strategies.

Routing: softmax over the router logits (float32), the top-k experts per token, their probabilities
renormalised to sum to 1. Capacity: none — the layer is *dropless*. Every token reaches all of its top-k
experts however unbalanced a batch is, so a session's output never depends on which other sessions share
its step (capacity-based dropping would couple them). Balance is encouraged during training only, by the
Switch-Transformer auxiliary loss ``E * sum_e(f_e * P_e)`` (f_e: share of assignments to expert e, P_e: its
mean router probability), weighted by ``router_aux_loss_coef``.

Expert parallelism: a module may hold only a contiguous range ``[first, first + n_local)`` of the experts;
it then returns the contribution of its own experts only, and the shard group sums the ranks' parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import invariant
from .config import ModelConfig
from .layers import Linear, SwiGLU

MoeImpl = Literal["loop", "bmm", "grouped"]


@dataclass
class Routing:
    """Top-k routing decision for N tokens: ``experts`` (N, k) int64, ``weights`` (N, k), and the aux loss."""

    experts: Tensor
    weights: Tensor
    aux_loss: Tensor


def route(logits: Tensor, top_k: int, with_aux: bool = True) -> Routing:
    """Route N tokens given router ``logits`` (N, E). ``with_aux=False`` skips the auxiliary loss (a zero
    then), which only training reads."""
    probs = logits.float().softmax(dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    n_experts = logits.shape[-1]
    if not with_aux:
        return Routing(experts, weights.to(logits.dtype), probs.new_zeros(()))
    share = torch.bincount(experts.flatten(), minlength=n_experts).float() / max(experts.numel(), 1)
    aux = n_experts * (share * probs.mean(dim=0)).sum()
    return Routing(experts, weights.to(logits.dtype), aux)


@dataclass
class Dispatch:
    """Token→expert assignments sorted by expert (local experts only): the rows of ``x`` to gather, their
    routing weights, and how many rows each local expert gets."""

    token_ids: Tensor  # (M,) row of x for each assignment
    weights: Tensor  # (M,)
    counts: Tensor  # (n_local,) int64, on CPU
    local_experts: Tensor  # (M,) local expert index of each assignment
    assignment: Tensor  # (M,) token * k + choice: which of its token's top-k choices each assignment is


def dispatch(routing: Routing, first: int, n_local: int, holds_all: bool = False) -> Dispatch:
    """Sort the assignments that fall on experts ``[first, first + n_local)`` by expert. ``holds_all``: the
    range is every expert (unsharded), so no assignment needs filtering out."""
    flat_e = routing.experts.flatten() - first  # (N*k,)
    k = routing.experts.shape[1]
    weights = routing.weights.flatten()
    assignment = torch.arange(routing.experts.numel(), device=flat_e.device)  # token * k + choice
    if not holds_all:
        keep = (flat_e >= 0) & (flat_e < n_local)
        flat_e, weights, assignment = flat_e[keep], weights[keep], assignment[keep]
    order = torch.argsort(flat_e, stable=True)
    assignment = assignment[order]
    counts = torch.bincount(flat_e, minlength=n_local).cpu()
    return Dispatch(assignment // k, weights[order], counts, flat_e[order], assignment)


class Experts(nn.Module):
    """A contiguous range of SwiGLU experts with stacked weights: w13 (E, d, 2h), w2 (E, h, d)."""

    def __init__(self, cfg: ModelConfig, first: int = 0, n_local: int | None = None, impl: MoeImpl = "grouped"):
        super().__init__()
        self.first = first
        self.n_local = cfg.n_experts if n_local is None else n_local
        self.holds_all = first == 0 and self.n_local == cfg.n_experts
        self.hidden = cfg.expert_hidden
        self.impl: MoeImpl = impl
        self.w13 = nn.Parameter(torch.empty(self.n_local, cfg.d_model, 2 * cfg.expert_hidden))
        self.w2 = nn.Parameter(torch.empty(self.n_local, cfg.expert_hidden, cfg.d_model))
        nn.init.normal_(self.w13, std=cfg.d_model**-0.5)
        nn.init.normal_(self.w2, std=cfg.expert_hidden**-0.5)

    def _act(self, h: Tensor) -> Tensor:
        gate, up = torch.split(h, self.hidden, dim=-1)
        return F.silu(gate) * up

    def _loop(self, xs: Tensor, d: Dispatch) -> Tensor:
        out = torch.empty_like(xs)
        start = 0
        for e, c in enumerate(d.counts.tolist()):
            if c:
                seg = slice(start, start + c)
                out[seg] = self._act(xs[seg] @ self.w13[e]) @ self.w2[e]
                start += c
        return out

    def _bmm(self, xs: Tensor, d: Dispatch) -> Tensor:
        counts = d.counts.tolist()
        cap = max(counts)
        starts = torch.cumsum(d.counts, 0) - d.counts
        slot = torch.arange(xs.shape[0]) - starts.repeat_interleave(d.counts)  # row within expert
        slot = slot.to(xs.device)
        padded = xs.new_zeros(self.n_local, cap, xs.shape[1])
        padded[d.local_experts, slot] = xs
        y = torch.bmm(self._act(torch.bmm(padded, self.w13)), self.w2)  # (E, cap, d)
        return y[d.local_experts, slot]

    def _grouped(self, xs: Tensor, d: Dispatch) -> Tensor:
        offs = torch.cumsum(d.counts, 0).to(device=xs.device, dtype=torch.int32)
        h = torch._grouped_mm(xs, self.w13, offs=offs)
        return torch._grouped_mm(self._act(h), self.w2, offs=offs)

    def _grouped_padded(self, xs: Tensor, d: Dispatch) -> Tensor:
        """``_grouped`` with every non-empty expert group padded to ``MIN_GEMM_ROWS`` rows, so no expert's
        GEMM takes a row-count-dependent kernel: a token's result is the same however many others chose
        its expert (batch-invariant mode)."""
        rows = torch.tensor([invariant.padded_rows(c) for c in d.counts.tolist()], dtype=torch.long)
        skip = (torch.cumsum(rows, 0) - rows) - (torch.cumsum(d.counts, 0) - d.counts)  # padding before group e
        dest = (torch.arange(xs.shape[0]) + skip.repeat_interleave(d.counts)).to(xs.device)
        padded = xs.new_zeros(int(rows.sum()), xs.shape[1])
        padded[dest] = xs
        offs = torch.cumsum(rows, 0).to(device=xs.device, dtype=torch.int32)
        h = torch._grouped_mm(padded, self.w13, offs=offs)
        return torch._grouped_mm(self._act(h), self.w2, offs=offs)[dest]

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        """Weighted sum of this module's experts' outputs for every token: x (N, d) → (N, d)."""
        d = dispatch(routing, self.first, self.n_local, self.holds_all)
        if d.token_ids.numel() == 0:
            return torch.zeros_like(x)
        xs = x[d.token_ids]  # (M, d) gathered, sorted by expert
        if invariant.enabled():
            ys = self._grouped_padded(xs, d)
        else:
            ys = IMPLS[self.impl](self, xs, d)
        # Each assignment's weighted output lands in its (token, choice) row — a row copy, not a scatter-add
        # — and a token's k contributions are summed in its own top-k order, never in an order the batch sets.
        k = routing.experts.shape[1]
        parts = x.new_zeros(x.shape[0] * k, x.shape[1]).index_copy_(0, d.assignment, ys * d.weights[:, None])
        parts = parts.view(x.shape[0], k, x.shape[1])
        out = parts[:, 0]
        for j in range(1, k):
            out = out + parts[:, j]
        return out


IMPLS: dict[str, Callable[[Experts, Tensor, Dispatch], Tensor]] = {
    "loop": Experts._loop,  # one GEMM pair per expert
    "bmm": Experts._bmm,  # experts padded to the fullest one, two batched GEMMs
    "grouped": Experts._grouped,  # torch._grouped_mm over the expert-sorted rows, no padding
}


ExpertRunner = Callable[[int, Tensor, Routing], Tensor]
"""Computes the routed-expert part of layer ``i`` for tokens x under a routing (local or across ranks)."""


class MoE(nn.Module):
    """Router + routed experts + optional shared expert. The routed part can be delegated to a shard group."""

    def __init__(self, cfg: ModelConfig, layer: int, experts: Experts | None) -> None:
        super().__init__()
        self.layer, self.top_k = layer, cfg.top_k
        self.router = Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = experts
        self.shared: nn.Module | None = None
        if cfg.shared_expert_hidden:
            self.shared = SwiGLU(cfg.d_model, cfg.shared_expert_hidden)
        self.runner: ExpertRunner | None = None
        """Set by the expert-parallel group on rank 0; None runs the local experts directly."""

    def forward(self, x: Tensor, with_aux: bool = True) -> tuple[Tensor, Tensor]:
        """x (..., d) → (output (..., d), aux loss; zero when not ``with_aux``, as in streaming steps)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = route(self.router(flat), self.top_k, with_aux)
        if self.runner is not None:
            y = self.runner(self.layer, flat, routing)
        elif self.experts is not None:
            y = self.experts(flat, routing)
        else:
            raise RuntimeError("MoE layer has neither local experts nor a shard group attached")
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.reshape(shape), routing.aux_loss
